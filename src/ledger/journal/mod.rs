//! The export journal: records finished versions and durable copies; never
//! applies an entry whose append failed, never appends to a poisoned store.
//!
//! It says which record versions are finished, and which copies of
//! unfinished ones are already durable at their target. An entry changes
//! the index only after its append was written; a poisoned store is first
//! rewritten whole from the index.
//!
//! On disk: `<state_dir>/journal.log`, a sequence of frames
//! `[len: u32 LE][postcard entry][crc32 LE]`, appended and fdatasynced.
//! Compaction streams the live entries into a new file and renames it over
//! the old one. Frame encoding/decoding ([`encode_frame`], [`decode_one`],
//! [`decode_frames`]) is pure; the file edge is behind [`JournalStore`] so
//! model tests can use memory.
//!
//! Where each rule lives:
//! - `frame`: the frame codec and the keys (pure);
//! - `index`: the in-memory index and how an entry changes it (pure);
//! - `store`: the file (and memory) store: cut-back of a failed append,
//!   poisoning, atomic replace;
//! - `open`: the pass at open: torn tail, salvage after damage;
//! - `window`: the floor of `export` rows not yet journaled;
//! - this file: the [`Journal`] API, appends and compaction.
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

mod frame;
mod index;
mod open;
mod store;
mod window;

use std::io::{self, Write};
use std::sync::Arc;

use crate::ledger::group_sync::Pending;

pub use frame::{
    Decoded, Entry, Outcome, PathKey, RowHash, copy_id, decode_frames, decode_one, encode_frame,
    path_key, row_signature, short_key, version,
};
use frame::{FrameReader, Step};
use index::{Index, apply_to};
pub use store::{FileStore, JournalStore, MemStore};
pub use window::Window;

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
        self.index
            .has_open_copy(short_key(key), version(size, mtime_ns), copy)
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
        self.index.orphan(sig)
    }

    /// Remembers, in memory only, an `export` row whose journal entry could
    /// not be written (a retry adopts it; recovery finds it after a restart).
    pub fn note_orphan(&mut self, row: RowHash, sig: RowHash) {
        self.index.add_orphan(row, sig);
    }

    /// Orphan rows known.
    pub fn orphans(&self) -> usize {
        self.index.orphans()
    }

    /// Records `export` rows found without their journal entry, and the
    /// new floor (recovery, before any worker runs).
    pub fn record_recovery(
        &mut self,
        orphans: &[(RowHash, RowHash)],
        floor: RowHash,
    ) -> io::Result<()> {
        for &(row, sig) in orphans {
            if !self.index.has_orphan(&row) {
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
        if self.index.contains(k) {
            self.write(Entry::Forget { key })?;
        }
        Ok(())
    }

    /// Starts a sweep: every record is unseen until [`Journal::mark_seen`].
    pub fn begin_sweep(&mut self) {
        self.index.begin_sweep();
    }

    /// Marks a record as still in the spool.
    pub fn mark_seen(&mut self, key: &PathKey) {
        self.index.mark_seen(short_key(key));
    }

    /// How many records were not marked since [`Journal::begin_sweep`].
    pub fn unseen(&self) -> usize {
        self.index.unseen()
    }

    /// Drops every record not marked since [`Journal::begin_sweep`] and
    /// compacts (streamed; no copy of the index is made).
    pub fn prune_unseen(&mut self) -> io::Result<()> {
        self.index.prune_unseen();
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
            let mut put = |e: &Entry| -> io::Result<()> {
                n += 1;
                w.write_all(&encode_frame(e))
            };
            if let Some(row) = floor {
                put(&Entry::Floor { row })?;
            }
            for &row in &acked {
                put(&Entry::Ack { row })?;
            }
            index.live_entries(&mut put)
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
        self.index.counts()
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
mod tests;
