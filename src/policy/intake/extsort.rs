//! External sort of index entries: fixed-size sorted runs written to temp
//! files, merged k-way. Memory is bounded by the run size and the number of
//! runs merged at once, never by the number of entries.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Entries held in memory before they are sorted and written as a run.
pub const RUN_ENTRIES: usize = 64 * 1024;
/// Bytes of strings held in memory before a run is written, whichever
/// limit comes first.
pub const RUN_BYTES: usize = 2 << 20;
/// Runs merged at once; more are first merged into longer runs.
pub const FAN_IN: usize = 64;
/// Read buffer per run while merging.
const READ_BUF: usize = 16 << 10;

/// One entry: sorted by `hash`, then `key`, then `user`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Primary sort key (the snapshot's FNV-1a hash of `key`).
    pub hash: u64,
    /// The normalised extension, or a user id.
    pub key: String,
    /// Index of the user in the model (order of appearance).
    pub user: u32,
    /// The user's id (for messages).
    pub owner: String,
}

impl Entry {
    /// Heap bytes the entry holds in a run buffer: the struct, its two
    /// strings and the allocator's overhead for each.
    fn cost(&self) -> usize {
        std::mem::size_of::<Entry>() + self.key.len() + self.owner.len() + 2 * 32
    }

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.hash.to_le_bytes())?;
        w.write_all(&self.user.to_le_bytes())?;
        w.write_all(&(self.key.len() as u32).to_le_bytes())?;
        w.write_all(&(self.owner.len() as u32).to_le_bytes())?;
        w.write_all(self.key.as_bytes())?;
        w.write_all(self.owner.as_bytes())
    }

    /// Reads one entry; `None` at a clean end of the run.
    fn read_from(r: &mut impl Read) -> io::Result<Option<Entry>> {
        let mut head = [0u8; 20];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut head[1..])?;
        let word =
            |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let mut h = [0u8; 8];
        h.copy_from_slice(&head[..8]);
        let (klen, olen) = (word(12) as usize, word(16) as usize);
        let mut s = vec![0u8; klen + olen];
        r.read_exact(&mut s)?;
        let owner = s.split_off(klen);
        let bad = |_| io::Error::new(io::ErrorKind::InvalidData, "run file is not UTF-8");
        Ok(Some(Entry {
            hash: u64::from_le_bytes(h),
            user: word(8),
            key: String::from_utf8(s).map_err(bad)?,
            owner: String::from_utf8(owner).map_err(bad)?,
        }))
    }
}

/// Collects entries into sorted runs under a work directory.
pub struct Sorter {
    dir: PathBuf,
    tag: &'static str,
    buf: Vec<Entry>,
    bytes: usize,
    runs: Vec<PathBuf>,
    total: u64,
    next_run: u32,
    max_entries: usize,
    max_bytes: usize,
}

impl Sorter {
    /// A sorter writing its runs as `<dir>/<tag>.<n>.run`.
    pub fn new(dir: &Path, tag: &'static str) -> Sorter {
        Sorter::with_limits(dir, tag, RUN_ENTRIES, RUN_BYTES)
    }

    /// [`Sorter::new`] with explicit run limits (tests use tiny runs).
    pub fn with_limits(dir: &Path, tag: &'static str, entries: usize, bytes: usize) -> Sorter {
        Sorter {
            dir: dir.to_path_buf(),
            tag,
            buf: Vec::new(),
            bytes: 0,
            runs: Vec::new(),
            total: 0,
            next_run: 0,
            max_entries: entries.max(1),
            max_bytes: bytes,
        }
    }

    /// Entries pushed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds an entry; writes a run when the buffer is full.
    pub fn push(&mut self, e: Entry) -> io::Result<()> {
        self.bytes += e.cost();
        self.buf.push(e);
        self.total += 1;
        if self.buf.len() >= self.max_entries || self.bytes >= self.max_bytes {
            self.spill()?;
        }
        Ok(())
    }

    fn run_path(&mut self) -> PathBuf {
        self.next_run += 1;
        self.dir.join(format!("{}.{}.run", self.tag, self.next_run))
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.sort_unstable();
        let path = self.run_path();
        let mut w = BufWriter::with_capacity(64 << 10, File::create(&path)?);
        for e in self.buf.drain(..) {
            e.write_to(&mut w)?;
        }
        w.flush()?;
        self.bytes = 0;
        self.runs.push(path);
        Ok(())
    }

    /// Ends the input: the entries in order, merged from the runs.
    pub fn finish(mut self) -> io::Result<Merge> {
        self.spill()?;
        while self.runs.len() > FAN_IN {
            let group: Vec<PathBuf> = self.runs.drain(..FAN_IN).collect();
            let path = self.run_path();
            let mut w = BufWriter::with_capacity(64 << 10, File::create(&path)?);
            for e in Merge::open(group)? {
                e?.write_to(&mut w)?;
            }
            w.flush()?;
            self.runs.push(path);
        }
        Merge::open(std::mem::take(&mut self.runs))
    }
}

/// The k-way merge of sorted runs (each run file is removed once read).
pub struct Merge {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
    paths: Vec<PathBuf>,
}

impl Merge {
    fn open(paths: Vec<PathBuf>) -> io::Result<Merge> {
        let mut readers = Vec::with_capacity(paths.len());
        let mut heap = BinaryHeap::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let mut r = BufReader::with_capacity(READ_BUF, File::open(p)?);
            if let Some(e) = Entry::read_from(&mut r)? {
                heap.push(Reverse((e, i)));
            }
            readers.push(r);
        }
        Ok(Merge {
            readers,
            heap,
            paths,
        })
    }
}

impl Iterator for Merge {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<io::Result<Entry>> {
        let Reverse((e, i)) = self.heap.pop()?;
        match Entry::read_from(&mut self.readers[i]) {
            Ok(Some(n)) => self.heap.push(Reverse((n, i))),
            Ok(None) => {}
            Err(err) => return Some(Err(err)),
        }
        Some(Ok(e))
    }
}

impl Drop for Merge {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Pairs of equal keys in a merged stream: each entry whose key equals the
/// previous entry's key, with that previous entry.
pub struct Duplicates {
    prev: Option<Entry>,
}

impl Duplicates {
    /// A fresh detector.
    pub fn new() -> Duplicates {
        Duplicates { prev: None }
    }

    /// Feeds the next entry in merge order; returns the earlier entry with
    /// the same key when `e` repeats it.
    pub fn check(&mut self, e: &Entry) -> Option<Entry> {
        let dup = match &self.prev {
            Some(p) if p.hash == e.hash && p.key == e.key => Some(p.clone()),
            _ => None,
        };
        if dup.is_none() {
            self.prev = Some(e.clone());
        }
        dup
    }
}

impl Default for Duplicates {
    fn default() -> Self {
        Duplicates::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("exportd-extsort-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn e(hash: u64, key: &str, user: u32) -> Entry {
        Entry {
            hash,
            key: key.into(),
            user,
            owner: format!("u{user}"),
        }
    }

    fn sorted(s: Sorter) -> Vec<Entry> {
        s.finish().unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn empty_input_merges_to_nothing() {
        let d = dir("empty");
        let s = Sorter::new(&d, "x");
        assert!(s.is_empty());
        assert!(sorted(s).is_empty());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_run_is_sorted() {
        let d = dir("one");
        let mut s = Sorter::new(&d, "x");
        for (i, h) in [5u64, 1, 3, 1].iter().enumerate() {
            s.push(e(*h, &format!("k{h}"), i as u32)).unwrap();
        }
        let out = sorted(s);
        let hs: Vec<(u64, u32)> = out.iter().map(|e| (e.hash, e.user)).collect();
        assert_eq!(hs, vec![(1, 1), (1, 3), (3, 2), (5, 0)]);
        assert_eq!(out[0].owner, "u1");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn many_runs_and_cascades_merge_in_order_and_clean_up() {
        let d = dir("many");
        // 3 entries per run, 1000 entries: 334 runs, more than FAN_IN.
        let mut s = Sorter::with_limits(&d, "x", 3, usize::MAX);
        let mut want = Vec::new();
        for i in 0..1000u32 {
            let h = (u64::from(i) * 7919) % 1009;
            let en = e(h, &format!("k{h}"), i);
            want.push(en.clone());
            s.push(en).unwrap();
        }
        assert_eq!(s.len(), 1000);
        want.sort();
        assert_eq!(sorted(s), want);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "runs removed");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn duplicates_are_found_across_runs() {
        let d = dir("dups");
        let mut s = Sorter::with_limits(&d, "x", 2, usize::MAX);
        // The same key lands in different runs (users 0 and 5), and a key
        // shares a hash with another but differs (no duplicate).
        let input = [
            e(9, "+1212", 0),
            e(4, "a", 1),
            e(4, "b", 2),
            e(7, "x", 3),
            e(8, "y", 4),
            e(9, "+1212", 5),
        ];
        for i in input {
            s.push(i).unwrap();
        }
        let mut d2 = Duplicates::new();
        let mut found = Vec::new();
        for en in s.finish().unwrap() {
            let en = en.unwrap();
            if let Some(first) = d2.check(&en) {
                found.push((first.owner, en.owner, en.key));
            }
        }
        assert_eq!(found, vec![("u0".into(), "u5".into(), "+1212".to_string())]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
