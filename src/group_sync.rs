//! Group commit for append-only files (the journal and the audit log).
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

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

/// Durability bookkeeping for one file.
#[derive(Debug, Default)]
pub struct GroupSync {
    st: Mutex<St>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct St {
    written: u64,
    synced: u64,
    syncing: bool,
}

impl GroupSync {
    /// A fresh tracker (nothing written).
    pub fn new() -> Arc<GroupSync> {
        Arc::new(GroupSync::default())
    }

    /// Records that one more append has been written (call after the write
    /// returned, under the file's own lock). Returns its sequence number.
    pub fn note_written(&self) -> u64 {
        let mut s = self.st.lock().unwrap_or_else(|p| p.into_inner());
        s.written += 1;
        s.written
    }

    /// Returns once append `seq` is durable, running `sync` itself if no
    /// sync is in progress. A failed sync is returned to the worker that ran
    /// it; waiters then try their own.
    pub fn wait_durable(&self, seq: u64, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut s = self.st.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if s.synced >= seq {
                return Ok(());
            }
            if !s.syncing {
                s.syncing = true;
                let upto = s.written;
                drop(s);
                let r = sync();
                let mut s = self.st.lock().unwrap_or_else(|p| p.into_inner());
                s.syncing = false;
                if r.is_ok() {
                    s.synced = s.synced.max(upto);
                }
                self.cv.notify_all();
                return r;
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A pending append: wait on it to make it durable.
#[must_use = "an append is not durable until `wait` returns Ok"]
#[derive(Debug)]
pub struct Pending {
    file: Arc<File>,
    group: Arc<GroupSync>,
    seq: u64,
}

impl Pending {
    /// An append of sequence `seq` to `file`.
    pub fn new(file: Arc<File>, group: Arc<GroupSync>, seq: u64) -> Pending {
        Pending { file, group, seq }
    }

    /// Blocks until the append is on disk (`fdatasync`, shared with others).
    pub fn wait(self) -> io::Result<()> {
        let f = self.file;
        self.group.wait_durable(self.seq, || f.sync_data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn a_failed_sync_is_not_counted_durable() {
        let g = GroupSync::new();
        let a = g.note_written();
        let e = g.wait_durable(a, || Err(io::Error::other("EIO")));
        assert!(e.is_err());
        let mut ran = false;
        g.wait_durable(a, || {
            ran = true;
            Ok(())
        })
        .unwrap();
        assert!(ran, "the append must be synced again after a failure");
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
                        assert!(g.st.lock().unwrap().synced >= seq);
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
        let s = g.st.lock().unwrap();
        assert_eq!(s.written, 1600);
        assert_eq!(s.synced, 1600);
    }
}
