//! The journal's floor: `export` rows not yet journaled, in chain order.
//! Memory only: never writes the journal or the audit log.
//!
//! It holds the `export` rows this process wrote whose journal entries are
//! not yet known durable.
//!
//! Invariant: every `export` row older (in chain order) than
//! [`Window::floor`] has a durable journal entry; rows acknowledged out of
//! order stay in the window until every older row is acknowledged too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::RowHash;

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
    pub(super) fn acked(&self) -> Vec<RowHash> {
        self.lock()
            .rows
            .values()
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect()
    }
}
