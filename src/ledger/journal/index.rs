//! The journal's in-memory index. Pure: never touches the store; it is what
//! the frames say, applied in order ([`apply_to`]).
//!
//! One 16-byte slot per finished record in 4096 sorted shards, a side table
//! of unfinished records and their durable copies, and the orphan rows
//! recovery found.
//!
//! Invariant: a key is either finished (a slot, `version | seen | outcome`
//! with the low 3 bits the outcome and the seen flag) or open (a side-table
//! entry), never both; `finished` counts the slots. Applying the frames of
//! a file in order, or the frames compaction writes from this index, gives
//! the same index.

use std::collections::HashMap;
use std::io;

use super::frame::{Entry, Outcome, RowHash, short_key, version};

/// One finished record: 64-bit key, and `version | seen << 2 | outcome`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    tag: u64,
}

/// The seen flag of a slot's tag (cleared by a sweep, set by `mark_seen`).
pub(super) const SEEN: u64 = 4;
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
pub(super) struct Index {
    shards: Vec<Vec<Slot>>,
    finished: usize,
    open: HashMap<u64, Open>,
    orphans: Vec<(RowHash, RowHash)>,
}

impl Index {
    pub(super) fn new() -> Index {
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
    pub(super) fn fin(&self, key: u64) -> Option<u64> {
        self.find(key).ok().map(|(s, i)| self.shards[s][i].tag)
    }
    fn remove_fin(&mut self, key: u64) {
        if let Ok((s, i)) = self.find(key) {
            self.shards[s].remove(i);
            self.finished -= 1;
        }
    }
    pub(super) fn set_fin(&mut self, key: u64, ver: u64, outcome: Outcome) {
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
    pub(super) fn add_copy(&mut self, key: u64, ver: u64, copy: u64, row: Option<RowHash>) {
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
    pub(super) fn forget(&mut self, key: u64) -> bool {
        let was = self.open.remove(&key).is_some() || self.fin(key).is_some();
        self.remove_fin(key);
        was
    }
    pub(super) fn len(&self) -> usize {
        self.finished + self.open.len()
    }
    /// Whether the key is known, finished or open.
    pub(super) fn contains(&self, key: u64) -> bool {
        self.open.contains_key(&key) || self.fin(key).is_some()
    }
    /// Whether the key is an unfinished record (tests).
    #[cfg(test)]
    pub(super) fn is_open(&self, key: u64) -> bool {
        self.open.contains_key(&key)
    }
    /// Whether this unfinished version has this copy durable.
    pub(super) fn has_open_copy(&self, key: u64, ver: u64, copy: u64) -> bool {
        self.open
            .get(&key)
            .is_some_and(|o| o.ver == ver && o.copies.iter().any(|c| c.0 == copy))
    }
    /// The orphan row with this signature.
    pub(super) fn orphan(&self, sig: &RowHash) -> Option<RowHash> {
        self.orphans.iter().find(|o| &o.1 == sig).map(|o| o.0)
    }
    /// Whether this row is a known orphan.
    pub(super) fn has_orphan(&self, row: &RowHash) -> bool {
        self.orphans.iter().any(|o| &o.0 == row)
    }
    /// Adds an orphan row (once).
    pub(super) fn add_orphan(&mut self, row: RowHash, sig: RowHash) {
        if !self.has_orphan(&row) {
            self.orphans.push((row, sig));
        }
    }
    /// Orphan rows known.
    pub(super) fn orphans(&self) -> usize {
        self.orphans.len()
    }
    /// Every record unseen.
    pub(super) fn begin_sweep(&mut self) {
        for s in &mut self.shards {
            for x in s.iter_mut() {
                x.tag &= !SEEN;
            }
        }
        for o in self.open.values_mut() {
            o.seen = false;
        }
    }
    /// Marks a record seen.
    pub(super) fn mark_seen(&mut self, k: u64) {
        if let Ok((s, i)) = self.find(k) {
            self.shards[s][i].tag |= SEEN;
        }
        if let Some(o) = self.open.get_mut(&k) {
            o.seen = true;
        }
    }
    /// Records not seen since the sweep began.
    pub(super) fn unseen(&self) -> usize {
        let finished: usize = self
            .shards
            .iter()
            .map(|s| s.iter().filter(|x| x.tag & SEEN == 0).count())
            .sum();
        finished + self.open.values().filter(|o| !o.seen).count()
    }
    /// Drops every record not seen since the sweep began.
    pub(super) fn prune_unseen(&mut self) {
        let mut n = 0;
        for s in &mut self.shards {
            let before = s.len();
            s.retain(|x| x.tag & SEEN != 0);
            n += before - s.len();
            if s.capacity() > s.len() + s.len() / 4 + 8 {
                s.shrink_to(s.len() + s.len() / 8 + 4);
            }
        }
        self.finished -= n;
        self.open.retain(|_, o| o.seen);
    }
    /// Counts of finished records by outcome.
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in &self.shards {
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
    /// Passes the entries that rebuild this index to `put`, in the order
    /// compaction writes them: orphans, finished records, open copies.
    pub(super) fn live_entries(
        &self,
        put: &mut dyn FnMut(&Entry) -> io::Result<()>,
    ) -> io::Result<()> {
        for &(row, sig) in &self.orphans {
            put(&Entry::Orphan { row, sig })?;
        }
        for s in &self.shards {
            for x in s {
                if let Some(outcome) = Outcome::from_code(x.tag) {
                    put(&Entry::Fin {
                        key: x.key,
                        ver: x.tag & !7,
                        outcome,
                    })?;
                }
            }
        }
        for (&key, o) in &self.open {
            for &(copy, row) in &o.copies {
                put(&Entry::Part {
                    key,
                    ver: o.ver,
                    copy,
                    row: row.unwrap_or([0; 32]),
                    floor: None,
                })?;
            }
        }
        Ok(())
    }
}

/// Applies one entry (read at open, or just appended) to the index and to
/// the floor last read.
pub(super) fn apply_to(index: &mut Index, floor: &mut Option<RowHash>, e: &Entry) {
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
        Entry::Orphan { row, sig } => index.add_orphan(row, sig),
        Entry::Floor { row } => *floor = Some(row),
        Entry::Ack { .. } => {}
    }
}
