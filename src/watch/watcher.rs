//! The watch room: inotify on the spool, keys and inbox; rescans; folders
//! in doubt. Never queues, exports or writes anything itself.
//!
//! It keeps the daemon's inotify watch of the spool (and of the
//! keys folder and the bundle inbox), the rescans, the spool folders in
//! doubt, overflow and watch-limit handling. It says what it saw as
//! [`WatchOut`] messages; it never queues, exports or writes anything itself.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{Event, EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use tracing::{error, info, warn};

use crate::export::Options;
use crate::ledger::journal::{self, FileStore, Journal, PathKey};
use crate::watch::lease::{self, Writers};
use crate::watch::map::WatchMap;
use crate::watch::pending::{self, Flags, Then, Uncertain, Writing};
use crate::watch::spool::{self, XmlRef};

/// What the watch room saw, for the agent to route, in order.
#[derive(Debug)]
pub enum WatchOut {
    /// A record's XML to queue.
    Found(XmlRef, Options),
    /// A content file is complete, or gone (deleted or moved away):
    /// records waiting for it go again (and find it whole, or missing).
    ContentComplete(PathBuf),
    /// A record's XML is gone: forget its version.
    Forget(PathKey),
    /// Something changed in the keys folder.
    KeysChanged,
    /// A bundle file landed in the inbox.
    InboxChanged,
    /// An error for `status`.
    Error {
        /// The path concerned.
        path: PathBuf,
        /// Error code.
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// The status changed (a rescan, a folder listed again).
    Changed,
}

/// Which folders the room watches, and what it shares with the workers.
pub struct WatchSetup {
    /// The configured spool roots.
    pub spool: Vec<PathBuf>,
    /// The config file (named in error messages).
    pub cfg_path: PathBuf,
    /// The age identities folder.
    pub keys_dir: PathBuf,
    /// The bundle inbox.
    pub inbox: PathBuf,
    /// The journal (a scan leaves out finished records).
    pub journal: Arc<Mutex<Journal<FileStore>>>,
    /// Content files still being written (shared with the workers).
    pub writing: Arc<Mutex<HashSet<PathBuf>>>,
}

/// A spool folder in doubt (see [`Watcher`]'s `doubts`).
struct Doubt {
    /// When to list it again.
    at: Instant,
    /// Listings tried so far.
    attempt: u32,
    /// An empty listing does not settle it (a root that may not be mounted).
    want_records: bool,
}

/// How long a folder in doubt waits before it is listed again: 1 s, 2 s,
/// 4 s ... up to a minute.
fn doubt_backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(7).saturating_sub(1)).min(60))
}

/// The spool root `p` lies in (the deepest, should roots nest).
fn root_in<'a>(roots: &'a [PathBuf], p: &Path) -> Option<&'a PathBuf> {
    roots
        .iter()
        .filter(|r| p.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())
}

/// Whether a spool file is open for writing now, asked of the kernel (a
/// read lease); `Unknown` when it cannot be opened or the kernel cannot say.
fn writers_of(root: &Path, f: &Path) -> Writers {
    let w = match spool::open_in_root(root, f) {
        Ok(file) => lease::writers(&file),
        Err(_) => Writers::Unknown,
    };
    tracing::debug!(file = %f.display(), writers = ?w, "lease verdict");
    w
}

fn recently_modified(p: &Path) -> bool {
    pending::is_recent(
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok()),
    )
}

/// How often the spool is rescanned while the inotify watch limit leaves
/// folders unwatched.
const WATCH_LIMIT_RESCAN: Duration = Duration::from_secs(30);

const WATCH_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

/// The watch room.
pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    setup: WatchSetup,
    /// The folder each watch descriptor stands for (compact: one per
    /// spool folder, see [`WatchMap`]).
    watches: WatchMap,
    /// The keys folder's watch, removed when the folder changes.
    keys_wd: Option<WatchDescriptor>,
    /// The watch limit was reached (folders are left unwatched): when the
    /// spool is rescanned. Set once when the limit is hit, not recomputed
    /// on every wake-up (or the rescan would never come).
    rescan_at: Option<Instant>,
    /// The watch limit was logged in this episode (once, not per rescan).
    limit_logged: bool,
    /// Files found without their creation event.
    uncertain: Uncertain,
    /// Spool folders whose content is unknown (a root missing, unreadable,
    /// or empty while the journal knows records under it; a folder whose
    /// listing failed): listed again with backoff until they can be.
    doubts: HashMap<PathBuf, Doubt>,
    /// Existing ancestors of missing spool roots, watched for the root to appear.
    ancestors: HashSet<PathBuf>,
    out: Vec<WatchOut>,
}

impl Watcher {
    /// Starts inotify. The error says what failed.
    pub fn new(setup: WatchSetup) -> Result<Watcher, String> {
        let inotify = Inotify::init().map_err(|e| format!("inotify_init failed: {e}"))?;
        let stream = inotify
            .into_event_stream(vec![0u8; 64 << 10])
            .map_err(|e| format!("inotify stream: {e}"))?;
        Ok(Watcher {
            stream,
            setup,
            watches: WatchMap::new(),
            keys_wd: None,
            rescan_at: None,
            limit_logged: false,
            uncertain: Uncertain::default(),
            doubts: HashMap::new(),
            ancestors: HashSet::new(),
            out: Vec::new(),
        })
    }

    /// Keys folder: a new identity retries records waiting for one.
    pub fn watch_keys(&mut self) {
        let dir = &self.setup.keys_dir;
        if dir.is_dir() {
            if let Ok(wd) = self.stream.watches().add(
                dir,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::ATTRIB,
            ) {
                self.watches.insert(wd.get_watch_descriptor_id(), dir, None);
                self.keys_wd = Some(wd);
            }
        }
    }

    /// The bundle inbox (already created).
    pub fn watch_inbox(&mut self) {
        if let Ok(wd) = self.stream.watches().add(
            &self.setup.inbox,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
        ) {
            self.watches
                .insert(wd.get_watch_descriptor_id(), &self.setup.inbox, None);
        }
    }

    /// The keys folder after a reload: the new one is watched, the old
    /// one's watch removed (unless it is also a spool folder or the inbox).
    /// True when the folder changed (the caller then reads the identities
    /// again, so one added before this watch existed is not missed).
    pub fn set_keys_dir(&mut self, dir: PathBuf) -> bool {
        if dir == self.setup.keys_dir {
            return false;
        }
        let old = std::mem::replace(&mut self.setup.keys_dir, dir);
        let shared = old == self.setup.inbox || self.root_of(&old).is_some();
        if let Some(wd) = self.keys_wd.take() {
            if !shared {
                self.watches.remove(wd.get_watch_descriptor_id());
                let _ = self.stream.watches().remove(wd);
            }
        }
        self.watch_keys();
        true
    }

    /// The next inotify event.
    pub async fn next_event(&mut self) -> Option<std::io::Result<Event<OsString>>> {
        std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut self.stream), cx)
        })
        .await
    }

    /// The configured spool roots that cannot be listed now (missing,
    /// unreadable, or empty while the journal knows records from them),
    /// for `status`.
    pub fn roots_in_doubt(&self) -> Vec<PathBuf> {
        self.setup
            .spool
            .iter()
            .filter(|r| self.doubts.contains_key(*r))
            .cloned()
            .collect()
    }

    /// Reading events failed: rescan.
    #[must_use = "what a room says must be routed"]
    pub fn on_read_error(&mut self, e: std::io::Error) -> Vec<WatchOut> {
        error!("reading inotify events failed: {e}; rescanning");
        self.rescan(false)
    }

    /// The inotify watch limit was reached at the last attempt: folders
    /// may be unwatched, so the spool is rescanned every 30 s.
    pub fn watch_limit_reached(&self) -> bool {
        self.rescan_at.is_some()
    }

    /// No file is waiting to be seen unchanged.
    pub fn is_settled(&self) -> bool {
        self.uncertain.is_empty()
    }

    /// The room's next timer: the watch-limit rescan, an uncertain file, a
    /// folder in doubt.
    pub fn next_timer(&self) -> Option<Instant> {
        let doubt = self.doubts.values().map(|d| d.at).min();
        [self.rescan_at, self.uncertain.next_deadline(), doubt]
            .into_iter()
            .flatten()
            .min()
    }

    /// Uncertain files whose time has come: complete unless still changing.
    #[must_use = "what a room says must be routed"]
    pub fn fire_uncertain(&mut self, now: Instant) -> Vec<WatchOut> {
        let roots = &self.setup.spool;
        let done = self.uncertain.fire(now, &mut |p| match root_in(roots, p)
            .map_or(Writers::Unknown, |r| writers_of(r, p))
        {
            Writers::Some => true,
            Writers::None => false,
            Writers::Unknown => p.exists() && recently_modified(p),
        });
        for p in done {
            self.complete(p);
        }
        self.take()
    }

    /// Folders in doubt whose time has come, and the watch-limit rescan.
    #[must_use = "what a room says must be routed"]
    pub fn fire_folders(&mut self, now: Instant) -> Vec<WatchOut> {
        if self.doubts.values().any(|d| d.at <= now) {
            self.recheck_doubts(now);
        }
        if self.rescan_at.is_some_and(|at| at <= now) {
            // rescan() hands over everything queued so far, its own finds
            // included.
            return self.rescan(false);
        }
        self.take()
    }

    fn take(&mut self) -> Vec<WatchOut> {
        std::mem::take(&mut self.out)
    }

    fn root_of(&self, p: &Path) -> Option<PathBuf> {
        root_in(&self.setup.spool, p).cloned()
    }

    fn add_watch(&mut self, dir: &Path) {
        match self.stream.watches().add(dir, WATCH_MASK) {
            Ok(wd) => {
                let root = root_in(&self.setup.spool, dir);
                if !self.watches.insert(
                    wd.get_watch_descriptor_id(),
                    dir,
                    root.map(|r| r.as_path()),
                ) {
                    // Never reached for a spool folder: the scan and the
                    // events skip names that are not UTF-8.
                    warn!("cannot watch {}: not a UTF-8 path", dir.display());
                    let _ = self.stream.watches().remove(wd);
                }
            }
            Err(e) if e.raw_os_error() == Some(28) => {
                if !self.limit_logged {
                    self.limit_logged = true;
                    error!(
                        "inotify watch limit reached at {}: raise fs.inotify.max_user_watches; until then the spool is rescanned every 30 s so no record is lost",
                        dir.display()
                    );
                }
                if self.rescan_at.is_none() {
                    self.rescan_at = Some(Instant::now() + WATCH_LIMIT_RESCAN);
                }
            }
            Err(e) => warn!("cannot watch {}: {e}", dir.display()),
        }
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.setup.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A content file is complete now.
    fn complete(&mut self, path: PathBuf) {
        self.writing().remove(&path);
        self.out.push(WatchOut::ContentComplete(path));
    }

    fn found(&mut self, found: Vec<XmlRef>) {
        for x in found {
            self.out.push(WatchOut::Found(
                x,
                Options {
                    grace_expired: false,
                    from_scan: true,
                },
            ));
        }
    }

    /// Full rescan of every root: (re)watch every folder, queue every XML
    /// that is not finished. At startup, forget journal entries whose XML is
    /// gone, but only when every root was listed completely and none is
    /// empty while the journal knows records that were not found: a root
    /// not mounted, unreadable or half-listed is "unknown", never "deleted".
    #[must_use = "what a room says must be routed"]
    pub fn rescan(&mut self, startup: bool) -> Vec<WatchOut> {
        let roots = self.setup.spool.clone();
        // Bounded memory: the journal marks what is seen in its own index
        // (no set of every key), and only unfinished XMLs are kept.
        let mut found: Vec<XmlRef> = Vec::new();
        let mut complete = true;
        let mut empty: Vec<PathBuf> = Vec::new();
        if startup {
            self.setup
                .journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .begin_sweep();
        }
        self.rescan_at = None;
        for root in &roots {
            let rep = self.scan_folder(root, root, &mut found, startup);
            complete &= rep.complete;
            if rep.complete && rep.xmls == 0 {
                empty.push(root.clone());
            }
        }
        if self.rescan_at.is_none() {
            self.limit_logged = false;
        }
        self.found(found);
        if startup {
            self.end_sweep(complete, &empty);
        }
        self.out.push(WatchOut::Changed);
        self.take()
    }

    /// After the startup rescan: prune the journal entries of records not
    /// found, or say why they are kept.
    fn end_sweep(&mut self, complete: bool, empty: &[PathBuf]) {
        let prune = complete && empty.is_empty();
        let journal = self.setup.journal.clone();
        let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
        let unseen = j.unseen();
        if prune {
            if let Err(e) = j.prune_unseen() {
                error!("journal compaction failed: {e}");
            }
        }
        drop(j);
        if !prune && unseen > 0 {
            if complete {
                for root in empty {
                    warn!(
                        "spool root {} is empty while the journal knows {unseen} records not found in the spool: treated as unknown (not mounted?), nothing is forgotten; it is listed again until records appear",
                        root.display()
                    );
                    self.doubt(root.clone(), true);
                }
            } else {
                warn!(
                    "the spool could not be listed completely: the {unseen} journal entries of records not found are kept (unknown, not deleted)"
                );
            }
        }
    }

    /// Why a spool root cannot be listed, if it cannot.
    fn root_problem(&mut self, root: &Path) -> Option<String> {
        // The configured path may lead through symlinks the administrator made.
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("is not a folder".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.watch_ancestor(root);
                Some(
                    "is missing (not mounted?); it is watched and exported from once it appears"
                        .to_string(),
                )
            }
            Err(e) => Some(format!("cannot be read: {e}")),
        }
    }

    /// Lists `start` (a root or a folder below `root`), watching every
    /// folder before it is read; what cannot be listed is put in doubt.
    fn scan_folder(
        &mut self,
        root: &Path,
        start: &Path,
        found: &mut Vec<XmlRef>,
        sweep: bool,
    ) -> spool::ScanReport {
        if start == root {
            if let Some(why) = self.root_problem(root) {
                if !self.doubts.contains_key(root) {
                    error!(
                        "spool root {} {why}; check `spool` in {}",
                        root.display(),
                        self.setup.cfg_path.display()
                    );
                    self.out.push(WatchOut::Error {
                        path: root.to_path_buf(),
                        code: "spool_unavailable",
                        message: format!("spool root {why}"),
                    });
                }
                self.doubt(root.to_path_buf(), false);
                return spool::ScanReport::default();
            }
        }
        let mut failed: Vec<PathBuf> = Vec::new();
        let journal = self.setup.journal.clone();
        let rep = spool::scan_below(
            root,
            start,
            &mut |d| self.add_watch(d),
            &mut |x| {
                let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                if sweep {
                    j.mark_seen(&x.key);
                }
                if !j.is_done(&x.key, x.size, x.mtime_ns) {
                    found.push(x);
                }
            },
            &mut |_| {},
            &mut |p, e| {
                warn!(
                    "cannot list spool folder {}: {e}; what it holds is unknown until it can be listed (retried)",
                    p.display()
                );
                failed.push(p.to_path_buf());
            },
        );
        self.doubt_unlisted(failed, Some(start));
        rep
    }

    /// Puts in doubt the folders (of the files) that could not be listed;
    /// `start` itself always counts as a folder.
    fn doubt_unlisted(&mut self, failed: Vec<PathBuf>, start: Option<&Path>) {
        for p in failed {
            let dir = if start == Some(p.as_path()) || p.is_dir() {
                p
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or(p)
            };
            self.doubt(dir, false);
        }
    }

    /// Puts a spool folder in doubt (or keeps it there, one backoff step further).
    fn doubt(&mut self, path: PathBuf, want_records: bool) {
        let d = self.doubts.entry(path).or_insert(Doubt {
            at: Instant::now(),
            attempt: 0,
            want_records,
        });
        d.attempt += 1;
        d.want_records |= want_records;
        d.at = Instant::now() + doubt_backoff(d.attempt);
    }

    /// Lists the folders in doubt whose time has come.
    fn recheck_doubts(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .doubts
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            let Some(root) = self.root_of(&p) else {
                self.doubts.remove(&p);
                continue;
            };
            let want_records = self.doubts.get(&p).is_some_and(|d| d.want_records);
            let mut found = Vec::new();
            let rep = self.scan_folder(&root, &p, &mut found, false);
            let n = found.len();
            self.found(found);
            let settled = rep.complete && (!want_records || rep.xmls > 0);
            if settled {
                if let Some(d) = self.doubts.remove(&p) {
                    info!(
                        "spool folder {} can be listed again ({} records found after {} attempts)",
                        p.display(),
                        n,
                        d.attempt
                    );
                }
            } else if rep.complete {
                // Listed, still empty: look again later.
                self.doubt(p, want_records);
            }
            // Otherwise scan_folder has put it back in doubt.
        }
        self.out.push(WatchOut::Changed);
    }

    /// Watches the nearest existing ancestor of a missing root, so that the
    /// root is listed as soon as it (or a folder on the way) is created.
    fn watch_ancestor(&mut self, root: &Path) {
        let mut a = root.parent();
        while let Some(p) = a {
            if p.is_dir() {
                if self.ancestors.contains(p) {
                    return;
                }
                match self.stream.watches().add(
                    p,
                    WatchMask::CREATE
                        | WatchMask::MOVED_TO
                        | WatchMask::ONLYDIR
                        | WatchMask::MASK_ADD,
                ) {
                    Ok(wd) => {
                        let id = wd.get_watch_descriptor_id();
                        if !self.watches.contains(id) {
                            self.watches.insert(id, p, None);
                        }
                        self.ancestors.insert(p.to_path_buf());
                    }
                    Err(e) => warn!(
                        "cannot watch {} for spool root {} to appear ({e}); it is looked for with backoff",
                        p.display(),
                        root.display()
                    ),
                }
                return;
            }
            a = p.parent();
        }
    }

    /// One inotify event: what it means, told as [`WatchOut`]s.
    #[must_use = "what a room says must be routed"]
    pub fn on_event(&mut self, ev: Event<OsString>) -> Vec<WatchOut> {
        let (wd, mask) = (ev.wd, ev.mask);
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue overflowed: rescanning the spool so no record is lost");
            // Close events may be among the lost ones.
            self.writing().clear();
            return self.rescan(false);
        }
        if mask.contains(EventMask::IGNORED) {
            self.watch_gone(&wd);
            return self.take();
        }
        let Some(dir) = self.watches.path(wd.get_watch_descriptor_id()) else {
            return self.take();
        };
        if self.ancestors.contains(&dir) && self.root_of(&dir).is_none() {
            // A folder appeared on the way to a missing root: look now.
            if mask.contains(EventMask::ISDIR) {
                let now = Instant::now();
                for (p, d) in self.doubts.iter_mut() {
                    if p.starts_with(&dir) {
                        d.at = now;
                    }
                }
            }
            return self.take();
        }
        let Some(name) = ev.name else {
            return self.take();
        };
        let Some(name_s) = name.to_str() else {
            return self.take();
        };
        let path = dir.join(name_s);
        if dir == self.setup.keys_dir {
            self.out.push(WatchOut::KeysChanged);
        } else if dir == self.setup.inbox {
            if !spool::is_temp_name(name_s) {
                self.out.push(WatchOut::InboxChanged);
            }
        } else if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && !name_s.starts_with('.')
            {
                self.new_folder(&path);
            }
        } else {
            self.file_event(mask, name_s, path);
        }
        self.take()
    }

    /// A watch ended: a root deleted or unmounted under us is unknown until
    /// listed again.
    fn watch_gone(&mut self, wd: &WatchDescriptor) {
        if let Some(p) = self.watches.remove(wd.get_watch_descriptor_id()) {
            if self.setup.spool.contains(&p) {
                warn!(
                    "spool root {} went away (deleted or unmounted); it is looked for again",
                    p.display()
                );
                self.doubt(p, false);
            }
        }
    }

    /// A new folder: watch it, then scan it (files may have landed before the watch).
    fn new_folder(&mut self, path: &Path) {
        let Some(root) = self.root_of(path) else {
            return;
        };
        let mut found = Vec::new();
        let mut files = Vec::new();
        // Each folder is watched before it is read, so nothing created
        // in between is missed.
        let mut failed = Vec::new();
        spool::scan_below(
            &root,
            path,
            &mut |d| self.add_watch(d),
            &mut |x| found.push(x),
            &mut |f| files.push(f.to_path_buf()),
            &mut |p, e| {
                warn!("cannot list spool folder {}: {e}; retried", p.display());
                failed.push(p.to_path_buf());
            },
        );
        self.doubt_unlisted(failed, None);
        // Files that landed before the watch: their creation was not
        // seen, so a recent one may still be open for writing. Treat it
        // as being written until it is closed (now watched) or has not
        // changed for a while.
        for f in files {
            match writers_of(&root, &f) {
                // Closed: a complete XML that lists it goes at once.
                Writers::None => {}
                // Open for writing: the folder is watched now, so its close
                // event will come.
                Writers::Some => {
                    self.writing().insert(f);
                }
                // The kernel cannot tell: the documented fallback, a file
                // that has not changed for a while counts as closed.
                Writers::Unknown => {
                    if recently_modified(&f) {
                        self.writing().insert(f.clone());
                        self.uncertain.found_unseen(f, Instant::now());
                    }
                }
            }
        }
        self.found(found);
    }

    /// An event on a file in a spool folder (see [`pending::file_event`]).
    fn file_event(&mut self, mask: EventMask, name: &str, path: PathBuf) {
        let meaning = pending::file_event(
            Flags {
                create: mask.contains(EventMask::CREATE),
                close_write: mask.contains(EventMask::CLOSE_WRITE),
                moved_to: mask.contains(EventMask::MOVED_TO),
                delete: mask.contains(EventMask::DELETE),
                moved_from: mask.contains(EventMask::MOVED_FROM),
            },
            name,
        );
        if spool::is_temp_name(name) {
            return;
        }
        let Some(root) = self.root_of(&path) else {
            return;
        };
        match meaning.writing {
            Writing::MaybeStarted => {
                // Only a new regular file is being written: a symlink or a
                // hard link to an existing file never gets a close event.
                use std::os::unix::fs::MetadataExt;
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.nlink() == 1) {
                    self.writing().insert(path.clone());
                }
            }
            Writing::Ended => {
                self.writing().remove(&path);
            }
            Writing::Unchanged => {}
        }
        match meaning.then {
            Then::Nothing => {}
            Then::ForgetRecord => {
                if let Ok(rel) = path.strip_prefix(&root) {
                    if let Some(rel) = rel.to_str() {
                        let key = journal::path_key(&root, rel);
                        self.out.push(WatchOut::Forget(key));
                    }
                }
            }
            Then::RecordWritten => {
                if let Some(x) = XmlRef::stat(&root, &path) {
                    self.out.push(WatchOut::Found(x, Options::default()));
                }
            }
            // A file gone: its waiters go again and find it missing
            // (reported after the grace), rather than wait for a close
            // that comes only when its writer lets go of it.
            Then::ContentComplete | Then::ContentGone => {
                self.uncertain.closed(&path);
                self.complete(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubt_backoff_doubles_up_to_a_minute() {
        let s = |a| doubt_backoff(a).as_secs();
        assert_eq!(
            [s(0), s(1), s(2), s(3), s(6), s(7), s(50)],
            [1, 1, 2, 4, 32, 60, 60]
        );
    }
}
