//! An external sort of the audit side: the `export` rows that concern one
//! target, sorted by record folder ([`super::archive::key_cmp`]) in runs of
//! a bounded size written to temporary files, then merged. Memory stays
//! bounded by the run size whatever the number of rows. Never touches
//! anything but its own temporary folder, which it removes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use super::archive::key_cmp;

/// One `export` row as the folder check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    /// `dst_folder_path`.
    pub folder: String,
    /// The listing hash.
    pub sha256: String,
    /// `n_files`.
    pub n_files: u64,
    /// `bytes`.
    pub bytes: u64,
    /// `ccdr_id` (the metadata XML is `<id>.xml` or `<id>.xml.age`).
    pub id: String,
    /// `audit-YYYYMMDD.csv:<line>`.
    pub at: String,
}

impl RowRef {
    fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            self.folder, self.sha256, self.n_files, self.bytes, self.id, self.at
        )
    }

    fn parse(line: &str) -> io::Result<RowRef> {
        let f: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad sort run line");
        if f.len() != 6 {
            return Err(bad());
        }
        Ok(RowRef {
            folder: f[0].into(),
            sha256: f[1].into(),
            n_files: f[2].parse().map_err(|_| bad())?,
            bytes: f[3].parse().map_err(|_| bad())?,
            id: f[4].into(),
            at: f[5].into(),
        })
    }

    fn cmp_key(&self, o: &RowRef) -> Ordering {
        key_cmp(&self.folder, &o.folder).then_with(|| self.at.cmp(&o.at))
    }
}

/// Rows in memory before a run is written (about 20 MiB).
pub const RUN_ROWS: usize = 50_000;

/// Where runs are written: `$TMPDIR`, else `/var/tmp` (on disk; `/tmp` is
/// often memory), else `/tmp`.
pub fn run_dir_base() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ if std::path::Path::new("/var/tmp").is_dir() => PathBuf::from("/var/tmp"),
        _ => std::env::temp_dir(),
    }
}

/// Collects rows, spilling sorted runs to disk.
pub struct Sorter {
    dir: Option<PathBuf>,
    buf: Vec<RowRef>,
    runs: Vec<PathBuf>,
    run_rows: usize,
    /// Rows added.
    pub rows: u64,
    /// Sum of their `bytes`.
    pub bytes: u64,
}

impl Drop for Sorter {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl Sorter {
    /// A sorter keeping at most `run_rows` rows in memory.
    pub fn new(run_rows: usize) -> Sorter {
        Sorter {
            dir: None,
            buf: Vec::new(),
            runs: Vec::new(),
            run_rows: run_rows.max(1),
            rows: 0,
            bytes: 0,
        }
    }

    /// Adds a row (fields must not hold tabs or line breaks; audit fields
    /// never hold line breaks, and a tab is replaced).
    pub fn push(&mut self, mut r: RowRef) -> io::Result<()> {
        for s in [&mut r.folder, &mut r.id, &mut r.sha256] {
            if s.contains('\t') {
                *s = s.replace('\t', " ");
            }
        }
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(r.bytes);
        self.buf.push(r);
        if self.buf.len() >= self.run_rows {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.dir.is_none() {
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            let d = run_dir_base().join(format!(
                "exportd-verify-{}-{}",
                std::process::id(),
                hex::encode(seed)
            ));
            fs::create_dir(&d)?;
            self.dir = Some(d);
        }
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        self.buf.sort_by(RowRef::cmp_key);
        let p = dir.join(format!("run-{}", self.runs.len()));
        let mut w = BufWriter::new(File::create(&p)?);
        for r in self.buf.drain(..) {
            w.write_all(r.line().as_bytes())?;
        }
        w.flush()?;
        self.runs.push(p);
        Ok(())
    }

    /// The rows in order.
    pub fn finish(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.buf.sort_by(RowRef::cmp_key);
            let mem = std::mem::take(&mut self.buf);
            return Ok(Sorted {
                mem: mem.into_iter(),
                readers: Vec::new(),
                heap: BinaryHeap::new(),
                _sorter: self,
            });
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::new();
        let mut heap = BinaryHeap::new();
        for (i, p) in self.runs.iter().enumerate() {
            let mut r = BufReader::with_capacity(64 * 1024, File::open(p)?);
            if let Some(row) = read_one(&mut r)? {
                heap.push(Reverse(HeapItem(row, i)));
            }
            readers.push(r);
        }
        Ok(Sorted {
            mem: Vec::new().into_iter(),
            readers,
            heap,
            _sorter: self,
        })
    }
}

fn read_one(r: &mut impl BufRead) -> io::Result<Option<RowRef>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    RowRef::parse(&line).map(Some)
}

struct HeapItem(RowRef, usize);

impl PartialEq for HeapItem {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.cmp_key(&o.0).then(self.1.cmp(&o.1))
    }
}

/// The sorted rows: from memory, or merged from the runs.
pub struct Sorted {
    mem: std::vec::IntoIter<RowRef>,
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<HeapItem>>,
    _sorter: Sorter,
}

impl Iterator for Sorted {
    type Item = io::Result<RowRef>;

    fn next(&mut self) -> Option<io::Result<RowRef>> {
        if self.readers.is_empty() {
            return self.mem.next().map(Ok);
        }
        let Reverse(HeapItem(row, i)) = self.heap.pop()?;
        match read_one(&mut self.readers[i]) {
            Ok(Some(next)) => self.heap.push(Reverse(HeapItem(next, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(folder: &str, at: &str) -> RowRef {
        RowRef {
            folder: folder.into(),
            sha256: "s".into(),
            n_files: 1,
            bytes: 2,
            id: "i".into(),
            at: at.into(),
        }
    }

    #[test]
    fn runs_merge_in_key_order() {
        for run in [1, 2, 3, 1000] {
            let mut s = Sorter::new(run);
            for (f, at) in [
                ("b", "1"),
                ("a/x", "2"),
                ("a.b", "3"),
                ("a", "4"),
                ("a", "0"),
            ] {
                s.push(r(f, at)).unwrap();
            }
            let got: Vec<(String, String)> = s
                .finish()
                .unwrap()
                .map(|x| x.map(|x| (x.folder, x.at)).unwrap())
                .collect();
            let want = [
                ("a.b", "3"),
                ("a", "0"),
                ("a", "4"),
                ("a/x", "2"),
                ("b", "1"),
            ];
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "run size {run}");
        }
    }
}
