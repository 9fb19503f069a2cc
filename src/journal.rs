//! The export journal: which record versions are finished, and which copies
//! of unfinished ones are already durable at their target.
//!
//! On disk: `<state_dir>/journal.log`, a sequence of frames
//! `[len: u32 LE][postcard entry][crc32 LE]`, appended and fdatasynced.
//! Compaction streams the live entries into a new file and renames it over
//! the old one. Frame encoding/decoding ([`encode_frame`], [`decode_one`],
//! [`decode_frames`]) is pure; the file edge is behind [`JournalStore`] so
//! model tests can use memory.
//!
//! Failure rules (see `RELIABILITY.md`):
//! - A failed or short append is cut back to the length before it; if that
//!   cut fails, the store is poisoned and refuses appends until a full
//!   rewrite (compaction from the in-memory index) succeeds.
//! - A failed fdatasync poisons the store the same way: the next append
//!   first rewrites the whole journal from the index (new file, fsync,
//!   rename, folder fsync).
//! - At open, bad bytes with no valid frame after them are a torn tail and
//!   are cut. Bad bytes *followed by valid frames* are damage in the middle:
//!   the valid later frames are salvaged (never dropped), the damaged bytes
//!   are saved beside the journal for inspection, an error is logged naming
//!   the file and offset, and the journal is rewritten clean.
//!
//! Memory: open streams the file through one fixed buffer; the index holds
//! one 16-byte slot per finished record (64-bit key prefix, 61-bit version
//! hash, outcome), in 4096 sorted shards, and a small side table for the
//! rare unfinished records and their copies.
//!
//! A record version is keyed by its spool root, relative XML path, size and
//! mtime: a rewritten XML is a new version and is processed again (a target
//! then refuses different bytes under the same final name).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::group_sync::{GroupSync, Pending};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A record's identity in the journal: hash of spool root and relative path.
pub type PathKey = [u8; 16];

/// An audit row's `row_hash`, as bytes.
pub type RowHash = [u8; 32];

/// The largest frame accepted when decoding.
const MAX_FRAME: usize = 4096;

/// The read buffer of [`Journal::open`].
const READ_BUF: usize = 64 << 10;

/// How much of one damaged region is saved beside the journal.
const SAVE_DAMAGED_MAX: usize = 1 << 20;

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

impl Outcome {
    fn code(self) -> u64 {
        match self {
            Outcome::Exported => 1,
            Outcome::Skipped => 2,
            Outcome::Rejected => 3,
        }
    }
    fn from_code(c: u64) -> Option<Outcome> {
        match c & 3 {
            1 => Some(Outcome::Exported),
            2 => Some(Outcome::Skipped),
            3 => Some(Outcome::Rejected),
            _ => None,
        }
    }
}

/// One journal entry. Variants 0-2 are the original format (still read);
/// new appends and compaction write 3-7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A record version is finished (original format).
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
    /// One copy (policy x target) of a record version is durable (original
    /// format).
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
    /// A record version is finished (compact form).
    Fin {
        /// [`short_key`] of the path key.
        key: u64,
        /// [`version`] of the XML's size and mtime.
        ver: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// One copy is durable and its `export` row is `row` (compact form).
    Part {
        /// [`short_key`].
        key: u64,
        /// [`version`].
        ver: u64,
        /// [`copy_id`].
        copy: u64,
        /// The `row_hash` of the copy's `export` audit row.
        row: RowHash,
        /// Every `export` row of this process older than `floor` (in chain
        /// order) was journaled when this entry was written.
        floor: Option<RowHash>,
    },
    /// An `export` audit row found at recovery without its journal entry:
    /// the copy it proves is adopted (no second row) when that record's copy
    /// with the same signature is made again.
    Orphan {
        /// The row's `row_hash`.
        row: RowHash,
        /// [`row_signature`] of the row.
        sig: RowHash,
    },
    /// Every `export` row up to this one (chain order) is journaled.
    Floor {
        /// A `row_hash`, or the genesis hash.
        row: RowHash,
    },
    /// An `export` row after the floor that is journaled (written by
    /// compaction, which drops the rows of finished records).
    Ack {
        /// The row's `row_hash`.
        row: RowHash,
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

/// The 64-bit key the index keeps of a path key (collisions among a
/// million records: about 3e-8).
pub fn short_key(k: &PathKey) -> u64 {
    u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
}

/// A record version's 61-bit hash (size and mtime), low 3 bits clear.
pub fn version(size: u64, mtime_ns: i64) -> u64 {
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    h.update(mtime_ns.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) & !7
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

/// The signature of an `export` row: SHA-256 of the fields that identify a
/// copy (record, native id, source folder, policy, target kind and folder,
/// files, bytes, folder digest) as they appear in the CSV line. Two rows
/// with the same signature record the same bytes at the same place.
pub fn row_signature(csv_fields: &[&str]) -> Option<RowHash> {
    if csv_fields.len() < 14 {
        return None;
    }
    let mut h = Sha256::new();
    for i in [1usize, 2, 3, 4, 5, 6, 8, 9, 13] {
        h.update(csv_fields[i].as_bytes());
        h.update([0]);
    }
    Some(h.finalize().into())
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

/// What [`decode_one`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid frame of `len` bytes.
    Frame(Entry, usize),
    /// The buffer ends inside a frame that may still be valid.
    Short,
    /// Not a valid frame.
    Bad,
}

/// Decodes the frame at the start of `buf`.
pub fn decode_one(buf: &[u8]) -> Decoded {
    if buf.len() < 4 {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Decoded::Bad;
    }
    if buf.len() < len + 8 {
        return Decoded::Short;
    }
    let body = &buf[4..4 + len];
    let c = &buf[4 + len..len + 8];
    if u32::from_le_bytes([c[0], c[1], c[2], c[3]]) != crc32fast::hash(body) {
        return Decoded::Bad;
    }
    match postcard::take_from_bytes::<Entry>(body) {
        Ok((e, [])) => Decoded::Frame(e, len + 8),
        _ => Decoded::Bad,
    }
}

/// Decodes frames from `buf`. Returns the entries and the length of the valid
/// prefix (anything after it is torn or damaged).
pub fn decode_frames(buf: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Decoded::Frame(e, n) = decode_one(&buf[pos..]) {
        out.push(e);
        pos += n;
    }
    (out, pos)
}

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
            if let Err(e) = crate::target::fs::sync_dir(dir) {
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

/// `export` rows written by this process and not yet known to be journaled
/// durably, in audit chain order: the journal's floor is the oldest of them.
#[derive(Debug, Default)]
pub struct Window {
    st: Mutex<WindowSt>,
}

#[derive(Debug, Default)]
struct WindowSt {
    next: u64,
    /// seq -> (row, acknowledged durably).
    rows: BTreeMap<u64, (RowHash, bool)>,
    /// The newest row popped off the front (every row up to it is journaled).
    last: Option<RowHash>,
}

impl Window {
    /// An empty window whose floor is `tail` (the audit chain's tail).
    pub fn new(tail: Option<RowHash>) -> Arc<Window> {
        let w = Window::default();
        w.lock().last = tail;
        Arc::new(w)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, WindowSt> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Registers an `export` row just appended (call under the audit log's
    /// lock, so the order is the chain's). Returns its ticket.
    pub fn register(&self, row: RowHash) -> u64 {
        let mut s = self.lock();
        s.next += 1;
        let seq = s.next;
        s.rows.insert(seq, (row, false));
        seq
    }
    /// The row's journal entry is durable.
    pub fn acknowledge(&self, seq: u64) {
        let mut s = self.lock();
        if let Some(r) = s.rows.get_mut(&seq) {
            r.1 = true;
        }
        while let Some((&k, &(row, true))) = s.rows.iter().next() {
            s.rows.remove(&k);
            s.last = Some(row);
        }
    }
    /// The row no longer needs its journal entry (the copy was not made).
    pub fn forget(&self, seq: u64) {
        self.acknowledge(seq);
    }
    /// Every `export` row before the floor is journaled.
    pub fn floor(&self) -> Option<RowHash> {
        let s = self.lock();
        s.rows.values().next().map(|r| r.0).or(s.last)
    }
    /// Rows after the floor already journaled.
    fn acked(&self) -> Vec<RowHash> {
        self.lock()
            .rows
            .values()
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect()
    }
}

/// One finished record: 64-bit key, and `version | seen << 2 | outcome`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    tag: u64,
}

const SEEN: u64 = 4;
const SHARD_BITS: u32 = 12;

/// An unfinished record.
#[derive(Debug, Clone)]
struct Open {
    ver: u64,
    seen: bool,
    /// Copies durable, with their `export` row when known.
    copies: Vec<(u64, Option<RowHash>)>,
}

/// The in-memory index.
struct Index {
    shards: Vec<Vec<Slot>>,
    finished: usize,
    open: HashMap<u64, Open>,
    orphans: Vec<(RowHash, RowHash)>,
}

impl Index {
    fn new() -> Index {
        Index {
            shards: (0..1usize << SHARD_BITS).map(|_| Vec::new()).collect(),
            finished: 0,
            open: HashMap::new(),
            orphans: Vec::new(),
        }
    }
    fn shard(&self, key: u64) -> usize {
        (key >> (64 - SHARD_BITS)) as usize
    }
    fn find(&self, key: u64) -> Result<(usize, usize), (usize, usize)> {
        let s = self.shard(key);
        match self.shards[s].binary_search_by_key(&key, |x| x.key) {
            Ok(i) => Ok((s, i)),
            Err(i) => Err((s, i)),
        }
    }
    fn fin(&self, key: u64) -> Option<u64> {
        self.find(key).ok().map(|(s, i)| self.shards[s][i].tag)
    }
    fn remove_fin(&mut self, key: u64) {
        if let Ok((s, i)) = self.find(key) {
            self.shards[s].remove(i);
            self.finished -= 1;
        }
    }
    fn set_fin(&mut self, key: u64, ver: u64, outcome: Outcome) {
        self.open.remove(&key);
        let tag = ver | SEEN | outcome.code();
        match self.find(key) {
            Ok((s, i)) => self.shards[s][i].tag = tag,
            Err((s, i)) => {
                let v = &mut self.shards[s];
                if v.len() == v.capacity() {
                    // Grow by an eighth, not double: the shards are the
                    // bulk of the agent's memory at a million records.
                    v.reserve_exact(v.len() / 8 + 4);
                }
                v.insert(i, Slot { key, tag });
                self.finished += 1;
            }
        }
    }
    fn add_copy(&mut self, key: u64, ver: u64, copy: u64, row: Option<RowHash>) {
        if let Some(tag) = self.fin(key) {
            if tag & !7 == ver {
                // Finished: every copy is there.
                return;
            }
            self.remove_fin(key);
        }
        let o = self.open.entry(key).or_insert(Open {
            ver,
            seen: true,
            copies: Vec::new(),
        });
        if o.ver != ver {
            *o = Open {
                ver,
                seen: true,
                copies: Vec::new(),
            };
        }
        if !o.copies.iter().any(|c| c.0 == copy) {
            o.copies.push((copy, row));
        }
        if let Some(r) = row {
            self.orphans.retain(|o| o.0 != r);
        }
    }
    fn forget(&mut self, key: u64) -> bool {
        let was = self.open.remove(&key).is_some() || self.fin(key).is_some();
        self.remove_fin(key);
        was
    }
    fn len(&self) -> usize {
        self.finished + self.open.len()
    }
}

/// What open found wrong with the file, if anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// A torn tail cut off: (offset, bytes).
    pub torn_tail: Option<(u64, u64)>,
    /// Damaged regions followed by valid frames: (offset, bytes).
    pub damaged: Vec<(u64, u64)>,
    /// Valid frames salvaged after the first damaged region.
    pub salvaged_frames: usize,
}

/// The journal: in-memory index plus its store.
pub struct Journal<S: JournalStore> {
    store: S,
    index: Index,
    frames: usize,
    /// Appends are written but not synced (see [`Journal::with_deferred`]).
    deferred: bool,
    /// The last deferred append, to wait on.
    pending: Option<Pending>,
    /// The last floor read at open or written.
    floor: Option<RowHash>,
    window: Arc<Window>,
    repair: Repair,
}

fn apply_to(index: &mut Index, floor: &mut Option<RowHash>, e: &Entry) {
    match *e {
        Entry::Done {
            key,
            size,
            mtime_ns,
            outcome,
        } => index.set_fin(short_key(&key), version(size, mtime_ns), outcome),
        Entry::Fin { key, ver, outcome } => index.set_fin(key, ver, outcome),
        Entry::Copy {
            key,
            size,
            mtime_ns,
            copy,
        } => index.add_copy(short_key(&key), version(size, mtime_ns), copy, None),
        Entry::Part {
            key,
            ver,
            copy,
            row,
            floor: f,
        } => {
            let row = if row == [0; 32] { None } else { Some(row) };
            index.add_copy(key, ver, copy, row);
            if f.is_some() {
                *floor = f;
            }
        }
        Entry::Forget { key } => {
            index.forget(short_key(&key));
        }
        Entry::Orphan { row, sig } => {
            if !index.orphans.iter().any(|o| o.0 == row) {
                index.orphans.push((row, sig));
            }
        }
        Entry::Floor { row } => *floor = Some(row),
        Entry::Ack { .. } => {}
    }
}

/// Streams frames out of a reader through one fixed buffer.
struct FrameReader<R: Read> {
    rd: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    pos: u64,
    eof: bool,
}

enum Step {
    Frame(Entry, u64, usize),
    /// Bad bytes at this offset (the rest of the file may hold valid frames).
    Bad(u64),
    /// The file ends inside a frame starting at this offset.
    Torn(u64),
    End,
}

impl<R: Read> FrameReader<R> {
    fn new(rd: R) -> Self {
        FrameReader {
            rd,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            pos: 0,
            eof: false,
        }
    }
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match self.rd.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn next(&mut self) -> io::Result<Step> {
        loop {
            match decode_one(&self.buf[self.start..self.end]) {
                Decoded::Frame(e, n) => {
                    let at = self.pos;
                    self.start += n;
                    self.pos += n as u64;
                    return Ok(Step::Frame(e, at, n));
                }
                Decoded::Bad => return Ok(Step::Bad(self.pos)),
                Decoded::Short if self.eof => {
                    return Ok(if self.start == self.end {
                        Step::End
                    } else {
                        Step::Torn(self.pos)
                    });
                }
                Decoded::Short => self.fill()?,
            }
        }
    }
    /// Skips one byte (looking for the next valid frame).
    fn skip(&mut self) {
        if self.start < self.end {
            self.start += 1;
            self.pos += 1;
        }
    }
}

impl<S: JournalStore> Journal<S> {
    /// Loads the journal, cutting off a torn tail and salvaging the valid
    /// frames after damage in the middle (see the module docs).
    pub fn open(store: S) -> io::Result<Journal<S>> {
        Self::load(store, true)
    }

    /// Loads the journal without repairing it (for readers such as `exportd
    /// status` while the daemon may be appending).
    pub fn open_read_only(store: S) -> io::Result<Journal<S>> {
        Self::load(store, false)
    }

    fn load(store: S, repair: bool) -> io::Result<Journal<S>> {
        let mut j = Journal {
            store,
            index: Index::new(),
            frames: 0,
            deferred: false,
            pending: None,
            floor: None,
            window: Window::new(None),
            repair: Repair::default(),
        };
        let mut rep = Repair::default();
        let mut valid_end = 0u64;
        let mut first_bad: Option<u64> = None;
        let mut saves: Vec<(u64, Vec<u8>)> = Vec::new();
        {
            let mut rd = FrameReader::new(j.store.reader()?);
            loop {
                match rd.next()? {
                    Step::Frame(e, at, n) => {
                        if first_bad.is_some() {
                            rep.salvaged_frames += 1;
                        }
                        valid_end = at + n as u64;
                        j.frames += 1;
                        apply_to(&mut j.index, &mut j.floor, &e);
                    }
                    Step::End => break,
                    Step::Bad(at) | Step::Torn(at) => {
                        // Look for a valid frame further on, one byte at a time.
                        let mut save = Vec::new();
                        let found = loop {
                            if rd.start < rd.end && save.len() < SAVE_DAMAGED_MAX {
                                save.push(rd.buf[rd.start]);
                            }
                            rd.skip();
                            match rd.next()? {
                                Step::Frame(e, at2, n) => break Some((e, at2, n)),
                                Step::End => break None,
                                Step::Bad(_) | Step::Torn(_) => continue,
                            }
                        };
                        match found {
                            None => {
                                rep.torn_tail = Some((at, rd.pos - at));
                                break;
                            }
                            Some((e, at2, n)) => {
                                first_bad.get_or_insert(at);
                                rep.damaged.push((at, at2 - at));
                                saves.push((at, save));
                                rep.salvaged_frames += 1;
                                valid_end = at2 + n as u64;
                                j.frames += 1;
                                apply_to(&mut j.index, &mut j.floor, &e);
                            }
                        }
                    }
                }
            }
        }
        if !repair {
            j.repair = rep;
            return Ok(j);
        }
        let name = j.store.describe();
        if let Some((at, n)) = rep.torn_tail {
            if rep.damaged.is_empty() {
                tracing::warn!(
                    "journal {name}: cut a torn tail of {n} bytes at offset {at} (an append interrupted by a crash or a full disk)"
                );
                j.store.truncate(valid_end).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "journal {name}: cannot cut its torn tail at offset {valid_end}: {e}; free space or fix permissions on the state folder"
                        ),
                    )
                })?;
            }
        }
        if !rep.damaged.is_empty() {
            let mut kept = Vec::new();
            for (at, bytes) in saves {
                match j.store.save_damaged(at, &bytes) {
                    Ok(Some(p)) => kept.push(p.display().to_string()),
                    Ok(None) => {}
                    Err(e) => tracing::error!("journal {name}: cannot save damaged bytes: {e}"),
                }
            }
            tracing::error!(
                "journal {name}: DAMAGED: {} region(s) of bad bytes followed by valid frames (first at offset {}, {} bytes); the {} valid frames after it were salvaged, not dropped, and the journal is rewritten without the bad bytes. Damaged bytes saved to: {}. Records whose entries were in the damaged bytes are exported again (a target finds the same bytes). Check the state disk (dmesg, SMART).",
                rep.damaged.len(),
                rep.damaged[0].0,
                rep.damaged[0].1,
                rep.salvaged_frames,
                if kept.is_empty() {
                    "(not saved)".to_string()
                } else {
                    kept.join(", ")
                }
            );
            j.compact().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "journal {name}: rewriting it after salvaging damaged frames failed: {e}; free space on the state disk and start again"
                    ),
                )
            })?;
        }
        j.repair = rep;
        Ok(j)
    }

    /// What open repaired.
    pub fn repair(&self) -> &Repair {
        &self.repair
    }

    fn apply(&mut self, e: &Entry) {
        apply_to(&mut self.index, &mut self.floor, e);
    }

    fn write(&mut self, e: Entry) -> io::Result<()> {
        if self.store.poisoned().is_some() {
            // Everything the index knows is rewritten durably first.
            self.compact()?;
        }
        let frame = encode_frame(&e);
        if self.deferred {
            if let Some(p) = self.store.append_deferred(&frame)? {
                self.pending = Some(p);
            }
        } else {
            self.store.append(&frame)?;
        }
        self.frames += 1;
        self.apply(&e);
        Ok(())
    }

    /// Runs `f` with appends written but not yet synced, and returns with
    /// the result the append to wait on (outside the journal's lock) before
    /// anything may rely on them: concurrent workers share one sync. When
    /// that wait fails, call [`Journal::sync_failed`].
    pub fn with_deferred<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, Option<Pending>) {
        self.deferred = true;
        let r = f(self);
        self.deferred = false;
        (r, self.pending.take())
    }

    /// A deferred append's fdatasync failed: the file's pages may be lost
    /// and its error state consumed, so the journal is rewritten whole from
    /// the index before the next append.
    pub fn sync_failed(&mut self, e: &io::Error) {
        self.store.poison(format!("fdatasync failed: {e}"));
    }

    /// The `export` rows of this process not yet journaled.
    pub fn window(&self) -> Arc<Window> {
        self.window.clone()
    }

    /// Replaces the window (after recovery, with the audit chain's tail).
    pub fn set_window(&mut self, w: Arc<Window>) {
        self.window = w;
    }

    /// The floor read at open (every `export` row before it is journaled).
    pub fn floor(&self) -> Option<RowHash> {
        self.floor
    }

    /// Whether this record version is finished.
    pub fn is_done(&self, key: &PathKey, size: u64, mtime_ns: i64) -> bool {
        self.outcome(key, size, mtime_ns).is_some()
    }

    /// How this record version finished, if it did.
    pub fn outcome(&self, key: &PathKey, size: u64, mtime_ns: i64) -> Option<Outcome> {
        let tag = self.index.fin(short_key(key))?;
        if tag & !7 == version(size, mtime_ns) {
            Outcome::from_code(tag)
        } else {
            None
        }
    }

    /// Whether a copy of this record version is durable.
    pub fn has_copy(&self, key: &PathKey, size: u64, mtime_ns: i64, copy: u64) -> bool {
        if self.outcome(key, size, mtime_ns) == Some(Outcome::Exported) {
            return true;
        }
        let ver = version(size, mtime_ns);
        self.index
            .open
            .get(&short_key(key))
            .is_some_and(|o| o.ver == ver && o.copies.iter().any(|c| c.0 == copy))
    }

    /// Records a durable copy (without its audit row: tests and old callers).
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

    /// Records a durable copy whose `export` row is `row`.
    pub fn record_copy_row(
        &mut self,
        key: PathKey,
        size: u64,
        mtime_ns: i64,
        copy: u64,
        row: RowHash,
    ) -> io::Result<()> {
        let floor = self.window.floor();
        self.write(Entry::Part {
            key: short_key(&key),
            ver: version(size, mtime_ns),
            copy,
            row,
            floor,
        })
    }

    /// An orphan `export` row with this signature, if recovery found one.
    pub fn orphan(&self, sig: &RowHash) -> Option<RowHash> {
        self.index.orphans.iter().find(|o| &o.1 == sig).map(|o| o.0)
    }

    /// Remembers, in memory only, an `export` row whose journal entry could
    /// not be written (a retry adopts it; recovery finds it after a restart).
    pub fn note_orphan(&mut self, row: RowHash, sig: RowHash) {
        if !self.index.orphans.iter().any(|o| o.0 == row) {
            self.index.orphans.push((row, sig));
        }
    }

    /// Orphan rows known.
    pub fn orphans(&self) -> usize {
        self.index.orphans.len()
    }

    /// Records `export` rows found without their journal entry, and the
    /// new floor (recovery, before any worker runs).
    pub fn record_recovery(
        &mut self,
        orphans: &[(RowHash, RowHash)],
        floor: RowHash,
    ) -> io::Result<()> {
        for &(row, sig) in orphans {
            if !self.index.orphans.iter().any(|o| o.0 == row) {
                self.write(Entry::Orphan { row, sig })?;
            }
        }
        self.write(Entry::Floor { row: floor })
    }

    /// Records a finished record version.
    pub fn record_done(
        &mut self,
        key: PathKey,
        size: u64,
        mtime_ns: i64,
        outcome: Outcome,
    ) -> io::Result<()> {
        self.write(Entry::Fin {
            key: short_key(&key),
            ver: version(size, mtime_ns),
            outcome,
        })?;
        self.maybe_compact()
    }

    /// Forgets a record whose XML left the spool.
    pub fn forget(&mut self, key: PathKey) -> io::Result<()> {
        let k = short_key(&key);
        if self.index.open.contains_key(&k) || self.index.fin(k).is_some() {
            self.write(Entry::Forget { key })?;
        }
        Ok(())
    }

    /// Starts a sweep: every record is unseen until [`Journal::mark_seen`].
    pub fn begin_sweep(&mut self) {
        for s in &mut self.index.shards {
            for x in s.iter_mut() {
                x.tag &= !SEEN;
            }
        }
        for o in self.index.open.values_mut() {
            o.seen = false;
        }
    }

    /// Marks a record as still in the spool.
    pub fn mark_seen(&mut self, key: &PathKey) {
        let k = short_key(key);
        if let Ok((s, i)) = self.index.find(k) {
            self.index.shards[s][i].tag |= SEEN;
        }
        if let Some(o) = self.index.open.get_mut(&k) {
            o.seen = true;
        }
    }

    /// How many records were not marked since [`Journal::begin_sweep`].
    pub fn unseen(&self) -> usize {
        let finished: usize = self
            .index
            .shards
            .iter()
            .map(|s| s.iter().filter(|x| x.tag & SEEN == 0).count())
            .sum();
        finished + self.index.open.values().filter(|o| !o.seen).count()
    }

    /// Drops every record not marked since [`Journal::begin_sweep`] and
    /// compacts (streamed; no copy of the index is made).
    pub fn prune_unseen(&mut self) -> io::Result<()> {
        let mut n = 0;
        for s in &mut self.index.shards {
            let before = s.len();
            s.retain(|x| x.tag & SEEN != 0);
            n += before - s.len();
            if s.capacity() > s.len() + s.len() / 4 + 8 {
                s.shrink_to(s.len() + s.len() / 8 + 4);
            }
        }
        self.index.finished -= n;
        self.index.open.retain(|_, o| o.seen);
        self.compact()
    }

    /// Rewrites the store with only the live state, streamed.
    pub fn compact(&mut self) -> io::Result<()> {
        let floor = self.window.floor().or(self.floor);
        let acked = self.window.acked();
        let index = &self.index;
        let mut n = 0usize;
        self.store.replace(&mut |w: &mut dyn Write| {
            n = 0;
            let mut put = |w: &mut dyn Write, e: &Entry| -> io::Result<()> {
                n += 1;
                w.write_all(&encode_frame(e))
            };
            if let Some(row) = floor {
                put(w, &Entry::Floor { row })?;
            }
            for &row in &acked {
                put(w, &Entry::Ack { row })?;
            }
            for &(row, sig) in &index.orphans {
                put(w, &Entry::Orphan { row, sig })?;
            }
            for s in &index.shards {
                for x in s {
                    if let Some(outcome) = Outcome::from_code(x.tag) {
                        put(
                            w,
                            &Entry::Fin {
                                key: x.key,
                                ver: x.tag & !7,
                                outcome,
                            },
                        )?;
                    }
                }
            }
            for (&key, o) in &index.open {
                for &(copy, row) in &o.copies {
                    put(
                        w,
                        &Entry::Part {
                            key,
                            ver: o.ver,
                            copy,
                            row: row.unwrap_or([0; 32]),
                            floor: None,
                        },
                    )?;
                }
            }
            Ok(())
        })?;
        self.frames = n;
        self.floor = floor;
        Ok(())
    }

    /// Compacts when the file holds many dead frames. A failed compaction
    /// is not the caller's failure (its entry is appended): the old file
    /// stays in use, or the store is poisoned and rewritten before the next
    /// append.
    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.frames > 2 * self.index.len() + 4096 {
            if let Err(e) = self.compact() {
                tracing::warn!(
                    "journal {}: compaction failed ({e}); it is tried again later",
                    self.store.describe()
                );
            }
        }
        Ok(())
    }

    /// Calls `f` with every `export` row hash the journal holds (Part and
    /// Ack entries), streaming the store again (recovery).
    pub fn scan_rows(&mut self, f: &mut dyn FnMut(&RowHash)) -> io::Result<()> {
        let mut rd = FrameReader::new(self.store.reader()?);
        loop {
            match rd.next()? {
                Step::Frame(Entry::Part { row, .. }, _, _)
                | Step::Frame(Entry::Ack { row }, _, _) => f(&row),
                Step::Frame(..) => {}
                Step::Bad(_) => rd.skip(),
                Step::Torn(_) | Step::End => return Ok(()),
            }
        }
    }

    /// Number of records known.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Frames in the store (for compaction tests and status).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Counts of finished records by outcome.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in &self.index.shards {
            for x in s {
                match Outcome::from_code(x.tag) {
                    Some(Outcome::Exported) => c.0 += 1,
                    Some(Outcome::Skipped) => c.1 += 1,
                    Some(Outcome::Rejected) => c.2 += 1,
                    None => {}
                }
            }
        }
        c
    }

    /// The store (tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (tests).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> PathKey {
        let mut k = [i; 16];
        k[7] = i.wrapping_mul(37);
        k
    }

    fn reopen(j: &Journal<MemStore>) -> Journal<MemStore> {
        let mut s = j.store().clone();
        s.space = None;
        Journal::open(s).unwrap()
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
        assert_eq!(j2.repair().torn_tail, Some((full as u64, 5)));
        assert!(j2.has_copy(&k(1), 10, 5, 7));
        assert!(!j2.has_copy(&k(1), 10, 6, 7), "a new version has no copies");
        assert!(j2.is_done(&k(2), 11, 6));
        assert!(!j2.is_done(&k(1), 10, 5));
    }

    #[test]
    fn a_zero_filled_tail_is_cut() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
        let mut s = j.store().clone();
        let full = s.bytes.len();
        s.bytes.extend_from_slice(&[0u8; 5000]);
        let j = Journal::open(s).unwrap();
        assert_eq!(j.store().bytes.len(), full);
        assert!(j.repair().damaged.is_empty());
        assert!(j.is_done(&k(1), 1, 1));
    }

    #[test]
    fn the_original_format_is_still_read() {
        let mut bytes = Vec::new();
        for e in [
            Entry::Copy {
                key: k(1),
                size: 1,
                mtime_ns: -1,
                copy: 9,
            },
            Entry::Done {
                key: k(2),
                size: 2,
                mtime_ns: 2,
                outcome: Outcome::Rejected,
            },
            Entry::Done {
                key: k(3),
                size: 3,
                mtime_ns: 3,
                outcome: Outcome::Exported,
            },
            Entry::Forget { key: k(3) },
        ] {
            bytes.extend(encode_frame(&e));
        }
        let mut j = Journal::open(MemStore {
            bytes,
            ..MemStore::default()
        })
        .unwrap();
        assert!(j.has_copy(&k(1), 1, -1, 9));
        assert_eq!(j.outcome(&k(2), 2, 2), Some(Outcome::Rejected));
        assert!(!j.is_done(&k(3), 3, 3));
        assert_eq!(j.len(), 2);
        j.compact().unwrap();
        let j = reopen(&j);
        assert!(j.has_copy(&k(1), 1, -1, 9));
        assert_eq!(j.outcome(&k(2), 2, 2), Some(Outcome::Rejected));
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
            Entry::Fin {
                key: 1,
                ver: 8,
                outcome: Outcome::Exported,
            },
            Entry::Part {
                key: 1,
                ver: 8,
                copy: 3,
                row: [7; 32],
                floor: Some([6; 32]),
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
    fn a_short_append_is_cut_back_and_later_frames_stay_readable() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
        let before = j.store().bytes.clone();
        // The disk fills up in the middle of the next frame.
        j.store_mut().space = Some(7);
        assert!(j.record_done(k(2), 2, 2, Outcome::Exported).is_err());
        assert_eq!(j.store().bytes, before, "the short frame is cut back");
        assert!(!j.is_done(&k(2), 2, 2), "a failed append is not applied");
        // Space is back: later appends land right after the last good frame.
        j.store_mut().space = None;
        j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
        let j2 = reopen(&j);
        assert_eq!(j2.repair(), &Repair::default());
        assert!(j2.is_done(&k(1), 1, 1) && j2.is_done(&k(3), 3, 3));
    }

    #[test]
    fn a_failed_cut_back_poisons_until_the_journal_is_rewritten() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
        j.store_mut().space = Some(5);
        j.store_mut().fail_truncate = true;
        assert!(j.record_done(k(2), 2, 2, Outcome::Exported).is_err());
        assert!(j.store().poisoned().is_some());
        // The next append rewrites everything the index knows first.
        j.store_mut().space = None;
        j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
        assert!(j.store().poisoned().is_none());
        let (_, valid) = decode_frames(&j.store().bytes);
        assert_eq!(valid, j.store().bytes.len(), "no torn frame left inside");
        let j2 = reopen(&j);
        assert!(j2.is_done(&k(1), 1, 1) && j2.is_done(&k(3), 3, 3));
        assert!(!j2.is_done(&k(2), 2, 2));
    }

    #[test]
    fn a_failed_sync_rewrites_the_journal_before_the_next_append() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        j.record_done(k(1), 1, 1, Outcome::Exported).unwrap();
        j.record_done(k(2), 2, 2, Outcome::Exported).unwrap();
        let frames_before = j.frames();
        j.sync_failed(&io::Error::from_raw_os_error(5));
        j.record_done(k(3), 3, 3, Outcome::Exported).unwrap();
        // Rewritten (compacted) then appended.
        assert!(j.frames() <= frames_before + 2);
        let j2 = reopen(&j);
        for i in 1..=3 {
            assert!(j2.is_done(&k(i), i as u64, i as i64));
        }
    }

    #[test]
    fn valid_frames_after_damage_are_salvaged_not_dropped() {
        // What an old binary left after ENOSPC: a short frame, then
        // acknowledged frames appended behind it.
        let a = encode_frame(&Entry::Fin {
            key: 1,
            ver: 8,
            outcome: Outcome::Exported,
        });
        let b = encode_frame(&Entry::Fin {
            key: 2,
            ver: 16,
            outcome: Outcome::Exported,
        });
        let c = encode_frame(&Entry::Fin {
            key: 3,
            ver: 24,
            outcome: Outcome::Skipped,
        });
        let d = encode_frame(&Entry::Part {
            key: 4,
            ver: 32,
            copy: 5,
            row: [9; 32],
            floor: None,
        });
        let mut bytes = a.clone();
        bytes.extend_from_slice(&b[..9]);
        bytes.extend_from_slice(&c);
        bytes.extend_from_slice(&[0xff; 3]);
        bytes.extend_from_slice(&d);
        let j = Journal::open(MemStore {
            bytes: bytes.clone(),
            ..MemStore::default()
        })
        .unwrap();
        let rep = j.repair().clone();
        assert_eq!(rep.damaged.len(), 2, "{rep:?}");
        assert_eq!(rep.damaged[0], (a.len() as u64, 9));
        assert_eq!(rep.salvaged_frames, 2);
        assert_eq!(rep.torn_tail, None);
        assert_eq!(j.store().damaged[0], (a.len() as u64, b[..9].to_vec()));
        assert_eq!(j.index.fin(1), Some(8 | SEEN | 1));
        assert_eq!(j.index.fin(3), Some(24 | SEEN | 2));
        assert!(j.index.open.contains_key(&4));
        // Rewritten clean: a second open finds nothing wrong.
        let (_, valid) = decode_frames(&j.store().bytes);
        assert_eq!(valid, j.store().bytes.len());
        let j2 = reopen(&j);
        assert_eq!(j2.repair(), &Repair::default());
        assert_eq!(j2.len(), 3);
        // Read-only open reports, and changes nothing.
        let ro = Journal::open_read_only(MemStore {
            bytes: bytes.clone(),
            ..MemStore::default()
        })
        .unwrap();
        assert_eq!(ro.repair(), &rep);
        assert_eq!(ro.store().bytes, bytes);
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
        let mut j2 = reopen(&j);
        assert!(j2.is_done(&k(5), 49, 0));
        j2.begin_sweep();
        for i in 0..10u8 {
            j2.mark_seen(&k(i));
        }
        j2.prune_unseen().unwrap();
        assert_eq!(j2.len(), 10);
        let j3 = reopen(&j2);
        assert_eq!(j3.len(), 10);
        assert!(j3.is_done(&k(5), 49, 0) && !j3.is_done(&k(50), 49, 0));
    }

    #[test]
    fn compactions_racing_group_committed_appends_lose_nothing() {
        let d = std::env::temp_dir().join(format!("exportd-journal-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let path = d.join("journal.log");
        let j = Arc::new(Mutex::new(
            Journal::open(FileStore::new(path.clone())).unwrap(),
        ));
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..150u8 {
                        let key = [t, i, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0];
                        let (r, p) = j.lock().unwrap().with_deferred(|j| {
                            j.record_copy_row(key, 1, 1, 9, [i; 32])?;
                            j.record_done(key, 1, 1, Outcome::Exported)
                        });
                        r.unwrap();
                        if let Some(p) = p {
                            p.wait().unwrap();
                        }
                    }
                })
            })
            .collect();
        let compactor = {
            let j = j.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    j.lock().unwrap().compact().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        compactor.join().unwrap();
        drop(j);
        let j = Journal::open(FileStore::new(path)).unwrap();
        assert_eq!(j.repair(), &Repair::default());
        assert_eq!(j.len(), 600, "every record survives the renames");
        for t in 0..4u8 {
            for i in 0..150u8 {
                let key = [t, i, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0];
                assert!(j.is_done(&key, 1, 1));
            }
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_floor_is_the_oldest_row_not_yet_journaled() {
        let w = Window::new(Some([1; 32]));
        assert_eq!(w.floor(), Some([1; 32]));
        let a = w.register([2; 32]);
        let b = w.register([3; 32]);
        assert_eq!(w.floor(), Some([2; 32]));
        w.acknowledge(b);
        assert_eq!(w.floor(), Some([2; 32]), "a is still open");
        assert_eq!(w.acked(), vec![[3; 32]]);
        w.acknowledge(a);
        assert_eq!(w.floor(), Some([3; 32]));
        assert!(w.acked().is_empty());
    }

    #[test]
    fn copies_carry_their_row_and_floor_and_orphans_are_adopted() {
        let mut j = Journal::open(MemStore::default()).unwrap();
        let w = Window::new(Some([1; 32]));
        j.set_window(w.clone());
        let t = w.register([2; 32]);
        j.record_copy_row(k(1), 1, 1, 5, [2; 32]).unwrap();
        w.acknowledge(t);
        j.record_recovery(&[([8; 32], [9; 32])], [2; 32]).unwrap();
        assert_eq!(j.orphan(&[9; 32]), Some([8; 32]));
        j.compact().unwrap();
        let mut j2 = reopen(&j);
        assert_eq!(j2.floor(), Some([2; 32]));
        assert!(j2.has_copy(&k(1), 1, 1, 5));
        assert_eq!(j2.orphan(&[9; 32]), Some([8; 32]));
        // Adopting the orphan row retires it.
        j2.record_copy_row(k(2), 2, 2, 5, [8; 32]).unwrap();
        assert_eq!(j2.orphans(), 0);
        let mut rows = Vec::new();
        j2.scan_rows(&mut |r| rows.push(*r)).unwrap();
        assert!(
            rows.contains(&[2; 32]) && rows.contains(&[8; 32]),
            "{rows:?}"
        );
    }
}
