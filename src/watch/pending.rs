//! What a watched file's events mean, and the uncertain-file timer. Pure:
//! never touches inotify or the disk.
//!
//! A file found without its creation event is asked of the kernel first
//! ([`crate::watch::lease`]): closed, or open for writing (then its close
//! event will come). Only when the kernel cannot say is it "uncertain":
//! [`Uncertain`] holds such files and settles them when they stop changing
//! (the documented fallback timer). The caller says what it saw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::watch::spool;

/// The fallback only: how long a file found without its creation event
/// must stay unchanged before it is taken as complete, when the kernel
/// cannot say whether it is open for writing ([`crate::watch::lease`]
/// answers `Unknown`: no permission to take a lease, or a file system
/// without leases).
pub const UNCERTAIN_RECHECK: Duration = Duration::from_secs(5);

/// The kinds of one inotify event on a file (not a folder) that matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `IN_CREATE`.
    pub create: bool,
    /// `IN_CLOSE_WRITE`.
    pub close_write: bool,
    /// `IN_MOVED_TO`.
    pub moved_to: bool,
    /// `IN_DELETE`.
    pub delete: bool,
    /// `IN_MOVED_FROM`.
    pub moved_from: bool,
}

/// What an event says about a content file still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writing {
    /// Created: being written if it is a new regular file (one link; a
    /// symlink or a hard link to an existing file never gets a close event).
    MaybeStarted,
    /// Closed, moved or deleted: no longer being written.
    Ended,
    /// Nothing.
    Unchanged,
}

/// What is to be done after the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing.
    Nothing,
    /// A record's XML was deleted or moved away: forget its version.
    ForgetRecord,
    /// A record's XML was written or moved in: queue it.
    RecordWritten,
    /// A content file is complete: records waiting for it go again.
    ContentComplete,
    /// A content file was deleted or moved away: records waiting for it go
    /// again (and find it missing). A file unlinked while open shows its
    /// close only when its writer lets go of it, which may be never.
    ContentGone,
}

/// The meaning of one file event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    /// The file's writing state.
    pub writing: Writing,
    /// What follows.
    pub then: Then,
}

/// The meaning of an event on the file `name` (a folder's events are not
/// handled here). Temporary names mean nothing at all.
pub fn file_event(f: Flags, name: &str) -> Meaning {
    const NOTHING: Meaning = Meaning {
        writing: Writing::Unchanged,
        then: Then::Nothing,
    };
    if spool::is_temp_name(name) {
        return NOTHING;
    }
    let metadata = spool::is_metadata_name(name);
    let gone = f.delete || f.moved_from;
    let written = f.close_write || f.moved_to;
    let writing = if metadata {
        Writing::Unchanged
    } else if f.create {
        Writing::MaybeStarted
    } else if written || gone {
        Writing::Ended
    } else {
        Writing::Unchanged
    };
    let then = match (gone, written, metadata) {
        (true, _, true) => Then::ForgetRecord,
        (true, _, false) => Then::ContentGone,
        (false, false, _) => Then::Nothing,
        (false, true, true) => Then::RecordWritten,
        (false, true, false) => Then::ContentComplete,
    };
    Meaning { writing, then }
}

/// Whether a file last modified `age` ago (`None`: unknown) may still be
/// being written.
pub fn is_recent(age: Option<Duration>) -> bool {
    age.is_none_or(|age| age < UNCERTAIN_RECHECK)
}

/// Files found in a new folder whose creation was not seen (possibly still
/// being written), with the time to look at them again.
#[derive(Debug, Default)]
pub struct Uncertain {
    files: HashMap<PathBuf, Instant>,
}

impl Uncertain {
    /// A file found without its creation event and recently modified: it
    /// counts as being written until it is closed or stays unchanged.
    pub fn found_unseen(&mut self, path: PathBuf, now: Instant) {
        self.files.insert(path, now + UNCERTAIN_RECHECK);
    }

    /// Its close event was seen: no longer uncertain.
    pub fn closed(&mut self, path: &Path) {
        self.files.remove(path);
    }

    /// No file is uncertain.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// When the next file is to be looked at again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.files.values().min().copied()
    }

    /// Looks again at every file whose time has come: one still being
    /// written (`still_written`: it exists and was modified recently) waits
    /// another [`UNCERTAIN_RECHECK`]; the others are complete and returned.
    pub fn fire(
        &mut self,
        now: Instant,
        still_written: &mut dyn FnMut(&Path) -> bool,
    ) -> Vec<PathBuf> {
        let due: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        let mut complete = Vec::new();
        for p in due {
            if still_written(&p) {
                self.files.insert(p, now + UNCERTAIN_RECHECK);
                continue;
            }
            self.files.remove(&p);
            complete.push(p);
        }
        complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(writing: Writing, then: Then) -> Meaning {
        Meaning { writing, then }
    }

    const NONE: Flags = Flags {
        create: false,
        close_write: false,
        moved_to: false,
        delete: false,
        moved_from: false,
    };
    const CREATE: Flags = Flags {
        create: true,
        ..NONE
    };
    const CLOSE: Flags = Flags {
        close_write: true,
        ..NONE
    };
    const MOVED_TO: Flags = Flags {
        moved_to: true,
        ..NONE
    };
    const DELETE: Flags = Flags {
        delete: true,
        ..NONE
    };
    const MOVED_FROM: Flags = Flags {
        moved_from: true,
        ..NONE
    };

    #[test]
    fn content_file_events() {
        assert_eq!(
            file_event(CREATE, "a.wav"),
            m(Writing::MaybeStarted, Then::Nothing)
        );
        assert_eq!(
            file_event(CLOSE, "a.wav"),
            m(Writing::Ended, Then::ContentComplete)
        );
        assert_eq!(
            file_event(MOVED_TO, "a.wav"),
            m(Writing::Ended, Then::ContentComplete)
        );
        assert_eq!(
            file_event(DELETE, "a.wav"),
            m(Writing::Ended, Then::ContentGone)
        );
        assert_eq!(
            file_event(MOVED_FROM, "a.wav"),
            m(Writing::Ended, Then::ContentGone)
        );
        assert_eq!(
            file_event(NONE, "a.wav"),
            m(Writing::Unchanged, Then::Nothing)
        );
    }

    #[test]
    fn metadata_events() {
        assert_eq!(
            file_event(CLOSE, "a.xml"),
            m(Writing::Unchanged, Then::RecordWritten)
        );
        assert_eq!(
            file_event(MOVED_FROM, "a.xml"),
            m(Writing::Unchanged, Then::ForgetRecord)
        );
        assert_eq!(
            file_event(CREATE, "a.xml"),
            m(Writing::Unchanged, Then::Nothing)
        );
    }

    #[test]
    fn temp_names_mean_nothing() {
        assert_eq!(
            file_event(CLOSE, ".a.xml.tmp"),
            m(Writing::Unchanged, Then::Nothing)
        );
    }

    #[test]
    fn recent_means_under_five_seconds_or_unknown() {
        assert!(is_recent(None));
        assert!(is_recent(Some(Duration::from_secs(4))));
        assert!(!is_recent(Some(UNCERTAIN_RECHECK)));
    }

    #[test]
    fn uncertain_files_settle_when_unchanged() {
        let t0 = Instant::now();
        let mut u = Uncertain::default();
        u.found_unseen(PathBuf::from("/s/a.wav"), t0);
        u.found_unseen(PathBuf::from("/s/b.wav"), t0 + Duration::from_secs(1));
        assert_eq!(u.next_deadline(), Some(t0 + UNCERTAIN_RECHECK));
        // Not due yet.
        assert!(u.fire(t0, &mut |_| false).is_empty());
        // a is due and still being written: another 5 s.
        let t1 = t0 + UNCERTAIN_RECHECK;
        assert!(u.fire(t1, &mut |_| true).is_empty());
        assert_eq!(
            u.next_deadline(),
            Some(t0 + Duration::from_secs(1) + UNCERTAIN_RECHECK)
        );
        // Both due, unchanged: complete.
        let t2 = t1 + UNCERTAIN_RECHECK;
        let mut done = u.fire(t2, &mut |_| false);
        done.sort();
        assert_eq!(
            done,
            vec![PathBuf::from("/s/a.wav"), PathBuf::from("/s/b.wav")]
        );
        assert!(u.is_empty());
    }

    #[test]
    fn a_close_event_ends_the_doubt() {
        let t0 = Instant::now();
        let mut u = Uncertain::default();
        u.found_unseen(PathBuf::from("/s/a.wav"), t0);
        u.closed(Path::new("/s/a.wav"));
        assert!(u.is_empty());
        assert_eq!(u.next_deadline(), None);
    }
}
