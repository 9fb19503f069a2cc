//! Group commit for append-only files (the journal and the audit log):
//! one fdatasync for many appends; never retries a failed sync and calls it
//! durable.
//!
//! Workers append under the file's mutex, then wait for durability outside
//! it. Whoever finds no sync in progress runs one `fdatasync` that covers
//! every append completed so far; the others wait for it instead of each
//! running their own. Under load, N concurrent appends cost about one sync
//! instead of N syncs queued behind one lock; alone, an append costs the same
//! single sync as before.
//!
//! Ordering: an append's sequence number is taken after its `write(2)`
//! returned (and under the file's mutex), so a sync started after sequence
//! `n` was taken covers every append up to `n`.
//!
//! # A failed sync poisons the file (the "fsyncgate" rule)
//!
//! Linux reports a writeback error once per open file description and marks
//! the failed pages clean: a second `fdatasync` returns 0 although the bytes
//! never reached the disk. So a failed sync is never retried and called
//! durable:
//!
//! - every waiter whose append is not covered by an earlier successful sync
//!   gets an error (the one that ran the sync gets the sync's own error, the
//!   others "an earlier fdatasync of this file failed"), and so does every
//!   append made afterwards, until the file is repaired;
//! - the repair ([`GroupSync::repair`], run by the next [`GroupSync::append`]
//!   under the owner's lock, before anything else is written) cuts the file
//!   back to the last durable length (the end of the last append a
//!   successful sync covered), syncs that, and starts a new epoch: waiters of
//!   the old epoch keep failing, appends of the new one start from a
//!   durable, clean tail. If the cut or its sync fails too, the file stays
//!   poisoned and the next append tries again; nothing in between is ever
//!   reported durable.
//!
//! A failed or short `write(2)` (ENOSPC) is undone the same way by
//! [`GroupSync::append`]: the file is cut back to its length before the
//! write and synced, so no partial record stays in front of later ones; if
//! that cut fails, the file is poisoned.
//!
//! Appends counted with the bare [`GroupSync::note_written`] (the caller
//! wrote the bytes itself) do not tell where they end: a file so written
//! cannot be repaired and, once poisoned, stays poisoned until its owner
//! opens it again (a fresh [`GroupSync`]).

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};

/// Durability bookkeeping for one file.
#[derive(Debug, Default)]
pub struct GroupSync {
    /// The epoch in force; replaced by each repair.
    cur: Mutex<Arc<Epoch>>,
}

/// One stretch of the file's life between repairs.
#[derive(Debug, Default)]
struct Epoch {
    st: Mutex<St>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct St {
    /// Sequence number of the last append counted.
    written: u64,
    /// Every append with a sequence number up to this one is durable.
    synced: u64,
    syncing: bool,
    /// File length at the end of append `written` (None: not known, the
    /// appends were counted with `note_written`).
    len: Option<u64>,
    /// File length known durable (the end of append `synced`).
    synced_len: Option<u64>,
    /// The error of the failed sync (or failed undo) that poisoned the file.
    failed: Option<(io::ErrorKind, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn poisoned_err(f: &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(
        f.0,
        format!(
            "not durable: an earlier fdatasync of this file failed ({}); the append is discarded and the file is cut back to its last durable length before the next append",
            f.1
        ),
    )
}

impl Epoch {
    fn wait_durable(&self, seq: u64, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut s = lock(&self.st);
        loop {
            if s.synced >= seq {
                return Ok(());
            }
            if let Some(f) = &s.failed {
                return Err(poisoned_err(f));
            }
            if !s.syncing {
                s.syncing = true;
                let upto = s.written;
                let upto_len = s.len;
                drop(s);
                let r = sync();
                let mut s = lock(&self.st);
                s.syncing = false;
                match &r {
                    Ok(()) => {
                        if upto > s.synced {
                            s.synced = upto;
                            s.synced_len = upto_len;
                        }
                    }
                    Err(e) => {
                        if s.failed.is_none() {
                            s.failed = Some((e.kind(), e.to_string()));
                        }
                    }
                }
                self.cv.notify_all();
                // `seq <= upto`: this sync covered it, so its result is ours.
                return r;
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl GroupSync {
    /// A fresh tracker (nothing written).
    pub fn new() -> Arc<GroupSync> {
        Arc::new(GroupSync::default())
    }

    /// A tracker for a file whose first `len` bytes are known durable
    /// (just written and synced by the caller).
    pub fn with_len(len: u64) -> Arc<GroupSync> {
        Arc::new(GroupSync {
            cur: Mutex::new(Arc::new(Epoch {
                st: Mutex::new(St {
                    len: Some(len),
                    synced_len: Some(len),
                    ..St::default()
                }),
                cv: Condvar::new(),
            })),
        })
    }

    fn epoch(&self) -> Arc<Epoch> {
        lock(&self.cur).clone()
    }

    /// Records that one more append has been written (call after the write
    /// returned, under the file's own lock). Returns its sequence number.
    ///
    /// Prefer [`GroupSync::append`]: appends counted here do not say where
    /// they end, so the file cannot be repaired after a failed sync.
    pub fn note_written(&self) -> u64 {
        let ep = self.epoch();
        let mut s = lock(&ep.st);
        s.written += 1;
        s.len = None;
        s.written
    }

    /// Returns once append `seq` is durable, running `sync` itself if no
    /// sync is in progress. Fails if the sync covering `seq` failed, or if an
    /// earlier one failed (the file is poisoned): a failed sync is never
    /// retried and then counted durable.
    pub fn wait_durable(&self, seq: u64, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.epoch().wait_durable(seq, sync)
    }

    /// The error that poisoned the file, if a sync (or the undo of a failed
    /// write) failed and the file was not repaired since.
    pub fn poisoned(&self) -> Option<io::Error> {
        let ep = self.epoch();
        let s = lock(&ep.st);
        s.failed.as_ref().map(poisoned_err)
    }

    /// The file length known durable, if known.
    pub fn durable_len(&self) -> Option<u64> {
        let ep = self.epoch();
        let s = lock(&ep.st);
        s.synced_len
    }

    /// Makes everything in `file` durable now, whoever wrote it: a sync
    /// that starts after this call (a failure poisons the file as any other).
    /// Call under the owner's lock, before anything that must come after the
    /// file's content on disk (the first row of the next day's file).
    pub fn flush(&self, file: &File) -> io::Result<()> {
        let ep = self.epoch();
        let seq = {
            let mut s = lock(&ep.st);
            if let Some(f) = &s.failed {
                return Err(poisoned_err(f));
            }
            // An empty append: the sync that covers it starts after now.
            s.written += 1;
            s.written
        };
        ep.wait_durable(seq, || file.sync_data())
    }

    /// Repairs a poisoned file (call under the owner's lock, with no append
    /// in progress): cuts `file` back to its last durable length, syncs the
    /// cut and starts a new epoch. Returns whether there was anything to
    /// repair. Fails, leaving the file poisoned, when the length is unknown or
    /// the cut or its sync fails.
    pub fn repair(&self, file: &File) -> io::Result<bool> {
        let mut cur = lock(&self.cur);
        let (len, why) = {
            let s = lock(&cur.st);
            let Some(f) = &s.failed else {
                return Ok(false);
            };
            if s.syncing {
                return Err(io::Error::other(
                    "a sync is still running on the poisoned file; try again",
                ));
            }
            (s.synced_len, poisoned_err(f))
        };
        let Some(len) = len else {
            return Err(io::Error::new(
                why.kind(),
                format!(
                    "{why}; its durable length is unknown, so it cannot be repaired in place: open it again"
                ),
            ));
        };
        // Never extend: someone else may have cut the file already.
        if file.metadata()?.len() > len {
            file.set_len(len)?;
        }
        file.sync_all()?;
        *cur = Arc::new(Epoch {
            st: Mutex::new(St {
                len: Some(len),
                synced_len: Some(len),
                ..St::default()
            }),
            cv: Condvar::new(),
        });
        Ok(true)
    }

    /// Appends `bytes` to `file` (opened with `O_APPEND`; call under the
    /// owner's lock, which every writer of the file must hold) and returns
    /// the append to wait on.
    ///
    /// First repairs the file if a sync failed ([`GroupSync::repair`]), for
    /// records that do not depend on what is before them (journal frames). A
    /// failed or short write is undone (the file is cut back to its length
    /// before it, and synced) and returned as an error; if the undo fails the
    /// file is poisoned.
    pub fn append(&self, file: &Arc<File>, bytes: &[u8]) -> io::Result<Pending> {
        self.repair(file)?;
        self.append_inner(file, bytes, None)
    }

    /// Like [`GroupSync::append`] for a record built on the file's content
    /// (a hash chain): never repairs (a cut would remove what `bytes` was
    /// chained to) and writes nothing unless the file is `expect_len` bytes
    /// long and not poisoned; the caller repairs, reads the tail again and
    /// builds its record anew.
    pub fn append_exact(
        &self,
        file: &Arc<File>,
        bytes: &[u8],
        expect_len: u64,
    ) -> io::Result<Pending> {
        self.append_inner(file, bytes, Some(expect_len))
    }

    fn append_inner(
        &self,
        file: &Arc<File>,
        bytes: &[u8],
        expect_len: Option<u64>,
    ) -> io::Result<Pending> {
        let ep = self.epoch();
        let known = {
            let s = lock(&ep.st);
            if let Some(f) = &s.failed {
                return Err(poisoned_err(f));
            }
            s.len
        };
        if known.is_none() {
            // What is in the file already (written before this tracker or by
            // `note_written` callers) must be durable before it is counted
            // so. If that fails, a second try would find nothing to report:
            // poisoned, and with no known durable length, for good.
            if let Err(e) = file.sync_data() {
                let mut s = lock(&ep.st);
                if s.failed.is_none() {
                    s.failed = Some((e.kind(), e.to_string()));
                }
                return Err(e);
            }
        }
        let before = file.metadata()?.len();
        if expect_len.is_some_and(|l| l != before) {
            return Err(io::Error::other(format!(
                "the file is {before} bytes long, not the {} the record was built on; not written",
                expect_len.unwrap_or_default()
            )));
        }
        if known.is_none() {
            let mut s = lock(&ep.st);
            s.len = Some(before);
            if s.synced == s.written {
                s.synced_len = Some(before);
            }
        }
        if let Err(e) = (&**file).write_all(bytes) {
            let undo = file.set_len(before).and_then(|()| file.sync_all());
            if let Err(u) = undo {
                let mut s = lock(&ep.st);
                if s.failed.is_none() {
                    s.failed = Some((
                        u.kind(),
                        format!("cutting off a failed write ({e}) failed: {u}"),
                    ));
                }
            }
            return Err(e);
        }
        let seq = {
            let mut s = lock(&ep.st);
            s.written += 1;
            s.len = Some(before + bytes.len() as u64);
            s.written
        };
        Ok(Pending {
            file: file.clone(),
            epoch: ep,
            seq,
        })
    }
}

/// A pending append: wait on it to make it durable.
#[must_use = "an append is not durable until `wait` returns Ok"]
#[derive(Debug)]
pub struct Pending {
    file: Arc<File>,
    epoch: Arc<Epoch>,
    seq: u64,
}

impl Pending {
    /// An append of sequence `seq` (from [`GroupSync::note_written`]) to
    /// `file`. Call under the file's lock, right after `note_written`.
    pub fn new(file: Arc<File>, group: Arc<GroupSync>, seq: u64) -> Pending {
        Pending {
            file,
            epoch: group.epoch(),
            seq,
        }
    }

    /// Blocks until the append is on disk (`fdatasync`, shared with others).
    /// An error means the append is not durable and never will be: the file
    /// is cut back before the next append.
    pub fn wait(self) -> io::Result<()> {
        let f = self.file;
        self.epoch.wait_durable(self.seq, || f.sync_data())
    }

    /// Whether a finished sync already covers this append (no waiting).
    pub fn is_durable(&self) -> bool {
        lock(&self.epoch.st).synced >= self.seq
    }

    /// [`Pending::wait`] with the sync replaced (tests inject failures).
    #[cfg(test)]
    pub(crate) fn wait_with(self, sync: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        let f = self.file;
        self.epoch.wait_durable(self.seq, || sync(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn synced(g: &GroupSync) -> u64 {
        lock(&g.epoch().st).synced
    }

    #[test]
    fn one_sync_covers_every_append_before_it() {
        let g = GroupSync::new();
        let a = g.note_written();
        let b = g.note_written();
        let syncs = AtomicUsize::new(0);
        g.wait_durable(a, || {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        // b was written before that sync started: already durable.
        g.wait_durable(b, || panic!("b needs no sync of its own"))
            .unwrap();
        let c = g.note_written();
        g.wait_durable(c, || {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_sync_fails_every_waiter_it_covered_and_every_later_one() {
        let g = GroupSync::new();
        let a = g.note_written();
        g.wait_durable(a, || Ok(())).unwrap();
        let b = g.note_written();
        let c = g.note_written();
        let e = g.wait_durable(b, || Err(io::Error::other("EIO")));
        assert_eq!(e.unwrap_err().to_string(), "EIO");
        // c was covered by the failed sync: a second sync would return 0
        // (the error is reported once), so it must not be tried.
        let e = g.wait_durable(c, || panic!("a failed sync is never retried"));
        assert!(e.unwrap_err().to_string().contains("earlier fdatasync"));
        // Appended after the failure, before any repair: fails too.
        let d = g.note_written();
        assert!(g.wait_durable(d, || Ok(())).is_err());
        assert!(g.poisoned().is_some());
        // What was durable before the failure stays durable.
        g.wait_durable(a, || panic!("a is durable")).unwrap();
    }

    #[test]
    fn concurrent_waiters_of_a_failed_sync_all_fail() {
        for _ in 0..20 {
            let g = GroupSync::new();
            let ok = Arc::new(AtomicUsize::new(0));
            let fails = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let (g, ok, fails) = (g.clone(), ok.clone(), fails.clone());
                    std::thread::spawn(move || {
                        let seq = g.note_written();
                        let r = g.wait_durable(seq, || {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            if i % 2 == 0 {
                                Err(io::Error::other("EIO"))
                            } else {
                                Ok(())
                            }
                        });
                        match r {
                            Ok(()) => {
                                // Only a sync that succeeded may cover it.
                                assert!(synced(&g) >= seq);
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                fails.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let ep = g.epoch();
            let s = lock(&ep.st);
            if s.failed.is_some() {
                // Nothing after the last successful sync returned Ok.
                assert_eq!(ok.load(Ordering::SeqCst) as u64, s.synced);
                assert_eq!(fails.load(Ordering::SeqCst) as u64, 8 - s.synced);
            }
        }
    }

    #[test]
    fn concurrent_appends_return_only_when_durable() {
        let g = GroupSync::new();
        let syncs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                let syncs = syncs.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let seq = g.note_written();
                        g.wait_durable(seq, || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok(())
                        })
                        .unwrap();
                        // Back from the wait means this append is covered by
                        // a finished sync, whoever ran it.
                        assert!(synced(&g) >= seq);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = syncs.load(Ordering::SeqCst);
        // Every append returned durable; never more syncs than appends.
        assert!((1..=1600).contains(&n), "{n}");
        let ep = g.epoch();
        let s = lock(&ep.st);
        assert_eq!(s.written, 1600);
        assert_eq!(s.synced, 1600);
    }

    /// A new folder with an empty file `f` open for appending.
    fn append_file() -> (tempfile::TempDir, Arc<File>) {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(d.path().join("f"))
            .unwrap();
        (d, Arc::new(f))
    }

    #[test]
    fn a_poisoned_file_is_cut_back_to_its_durable_length_before_the_next_append() {
        let (d, f) = append_file();
        let g = GroupSync::new();
        g.append(&f, b"one\n").unwrap().wait().unwrap();
        let p2 = g.append(&f, b"two\n").unwrap();
        let p3 = g.append(&f, b"three\n").unwrap();
        assert!(p2.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
        assert!(p3.wait().is_err(), "covered by the failed sync");
        assert_eq!(g.durable_len(), Some(4));
        // The next append repairs first: two and three are gone, four is
        // written at the durable end and becomes durable normally.
        let p4 = g.append(&f, b"four\n").unwrap();
        p4.wait().unwrap();
        assert!(g.poisoned().is_none());
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"one\nfour\n");
        assert_eq!(g.durable_len(), Some(9));
    }

    #[test]
    fn waiters_of_the_old_epoch_still_fail_after_a_repair() {
        let (d, f) = append_file();
        let g = GroupSync::new();
        let p1 = g.append(&f, b"one\n").unwrap();
        let p2 = g.append(&f, b"two\n").unwrap();
        assert!(p1.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
        assert!(g.repair(&f).unwrap());
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"");
        let p3 = g.append(&f, b"three\n").unwrap();
        p3.wait().unwrap();
        // p2's bytes were cut off: its wait must fail although a later sync
        // of the same file succeeded.
        assert!(p2.wait().is_err());
    }

    #[test]
    fn a_chained_append_is_never_written_over_a_cut() {
        let (d, f) = append_file();
        let g = GroupSync::with_len(0);
        g.append_exact(&f, b"one\n", 0).unwrap().wait().unwrap();
        let p2 = g.append_exact(&f, b"two\n", 4).unwrap();
        // The record was built on 8 bytes; the sync of "two" fails in
        // between: nothing is written and nothing is repaired behind the
        // caller's back (a cut would remove what it is chained to).
        assert!(p2.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
        assert!(g.append_exact(&f, b"three\n", 8).is_err());
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"one\ntwo\n");
        assert!(g.repair(&f).unwrap());
        // Built on a stale length: refused.
        assert!(g.append_exact(&f, b"three\n", 8).is_err());
        g.append_exact(&f, b"three\n", 4).unwrap().wait().unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"one\nthree\n");
    }

    #[test]
    fn a_file_counted_without_lengths_stays_poisoned() {
        let (_d, f) = append_file();
        let g = GroupSync::new();
        (&*f).write_all(b"x").unwrap();
        let s = g.note_written();
        let p = Pending::new(f.clone(), g.clone(), s);
        assert!(p.wait_with(|_| Err(io::Error::other("EIO"))).is_err());
        assert!(g.append(&f, b"y").is_err());
        assert!(g.poisoned().is_some());
    }

    #[test]
    fn a_failed_write_is_cut_off() {
        let (d, f) = append_file();
        let g = GroupSync::new();
        g.append(&f, b"one\n").unwrap().wait().unwrap();
        // Through a read-only descriptor the write fails (EBADF) and so does
        // the undo (the cut): the file must then be poisoned, not left as it
        // is with the next append trusted.
        let ro = Arc::new(File::open(d.path().join("f")).unwrap());
        assert!(g.append(&ro, b"two\n").is_err());
        assert!(g.poisoned().is_some());
        // The owner's descriptor repairs it.
        g.append(&f, b"three\n").unwrap().wait().unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"one\nthree\n");
    }
}
