//! The schedule room: queue, workers, waits, retries; decides what runs
//! next. Never reads the spool, runs an export or writes the status itself.
//!
//! It keeps the queue of records, the workers in flight, the
//! waits (missing files and their grace, files being written), retries with
//! backoff and the records blocked until a configuration or key change.
//! It decides what runs next and what a worker's report means; it never
//! reads the spool, runs an export or writes the status file itself.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::agent::health;
use crate::agent::status::{PendingList, PendingRecord, Wait};
use crate::export::{Options, Outcome, Report};
use crate::ledger::journal::{self, PathKey};
use crate::time::Timestamp;
use crate::watch::spool::XmlRef;

/// Logs about a record at a level: its id (`record`, once read) and its
/// XML (`path`) as separate fields.
macro_rules! log_record {
    ($level:ident, $rep:expr, $($rest:tt)+) => {
        match &$rep.record_id {
            Some(id) => tracing::$level!(record = %id, path = %$rep.xml.path.display(), $($rest)+),
            None => tracing::$level!(path = %$rep.xml.path.display(), $($rest)+),
        }
    };
}

/// Capped exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    backoff_with(attempt, jitter)
}

/// [`backoff`] with the jitter's source given (any number; reduced to a
/// quarter of the delay at most).
fn backoff_with(attempt: u32, jitter_source: u64) -> Duration {
    let base = 1u64 << attempt.min(9).saturating_sub(1);
    let capped = base.min(300) * 1000;
    let jitter = jitter_source % (capped / 4 + 1);
    Duration::from_millis(capped - capped / 8 + jitter)
}

/// How long a freshly written, unparsable XML found by a scan waits.
const YOUNG_RETRY: Duration = Duration::from_secs(5);

/// What a worker's report means for the record's schedule (see [`verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Finished for this version: every wait dropped, counted.
    Finished(journal::Outcome),
    /// Listed files are missing: wait for them; `give_up` when the grace has
    /// expired or the error was reported (then no more grace timer).
    WaitFiles {
        /// The missing files.
        missing: &'a [PathBuf],
        /// Report it as a failure now.
        give_up: bool,
    },
    /// A target failed transiently: try again after [`backoff`].
    RetryLater {
        /// The attempt this will be.
        attempt: u32,
        /// What failed.
        msg: &'a str,
    },
    /// A target failed transiently once too often (`until_idle` only).
    GiveUp {
        /// The attempts made.
        attempt: u32,
        /// What failed.
        msg: &'a str,
    },
    /// Refused until a configuration change, or a key (`need_key`).
    Blocked {
        /// Waiting for an age identity.
        need_key: bool,
        /// Why.
        msg: &'a str,
    },
    /// The XML is gone: forget it.
    Forget,
    /// Waiting for these files, still being written.
    WaitWriting(&'a [PathBuf]),
    /// Finished before: every wait dropped.
    AlreadyDone,
    /// Freshly written and unparsable: again in 5 s.
    Young {
        /// The attempt this will be.
        attempt: u32,
        /// The next attempt still counts as found by a scan (until the third).
        from_scan: bool,
    },
}

/// What a worker's `outcome` means, given the attempts made before and the
/// options it ran with. Pure.
pub fn verdict(
    outcome: &Outcome,
    prev_attempt: Option<u32>,
    o: Options,
    until_idle: bool,
) -> Verdict<'_> {
    let attempt = prev_attempt.unwrap_or(0) + 1;
    match outcome {
        Outcome::Finished(out) => Verdict::Finished(*out),
        Outcome::Incomplete { missing, reported } => Verdict::WaitFiles {
            missing,
            give_up: *reported || o.grace_expired,
        },
        Outcome::Retry(msg) if until_idle && attempt >= 4 => Verdict::GiveUp { attempt, msg },
        Outcome::Retry(msg) => Verdict::RetryLater { attempt, msg },
        Outcome::Failed(msg) => Verdict::Blocked {
            need_key: false,
            msg,
        },
        Outcome::NeedKey(msg) => Verdict::Blocked {
            need_key: true,
            msg,
        },
        Outcome::Vanished => Verdict::Forget,
        Outcome::Writing(files) => Verdict::WaitWriting(files),
        Outcome::AlreadyDone => Verdict::AlreadyDone,
        Outcome::Young(_) => Verdict::Young {
            attempt,
            from_scan: o.from_scan && attempt < 3,
        },
    }
}

/// A record failure, for `status` (the warning is logged already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The XML's path.
    pub path: PathBuf,
    /// The record id ('' when unknown).
    pub record: String,
    /// Error code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// What the status room is to count after a report.
#[derive(Debug, Default)]
pub struct Counted {
    /// Finished this way (a record seen).
    pub finished: Option<journal::Outcome>,
    /// A failure to count (`failed`).
    pub failed: bool,
    /// The failure to show, if any.
    pub failure: Option<Failure>,
    /// The record is gone: its journal entry is to be forgotten.
    pub forget: bool,
    /// Exported: how long since the agent first saw it.
    pub latency: Option<Duration>,
    /// The record needs nothing more (finished, done before, gone): its
    /// earlier errors are over.
    pub settled: bool,
    /// Records failed now (and not exported since).
    pub failed_now: u64,
}

/// The queue's size, for the status file.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Queued, in flight, waiting for files or for a retry.
    pub backlog: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Waiting for a configuration change or a key.
    pub blocked: u64,
    /// Waiting for missing files.
    pub incomplete: u64,
    /// When the oldest unfinished record was first seen.
    pub oldest: Option<Timestamp>,
}

/// What the schedule knows of an unfinished record (for `status --pending`).
struct Info {
    /// The metadata XML.
    path: PathBuf,
    /// When first seen (latency).
    first_seen: Instant,
    /// The same on the wall clock (the oldest pending; `status --pending`).
    first_seen_at: Timestamp,
    /// Its id, once a worker read it.
    record_id: Option<String>,
    /// Targets whose copy failed last time, with the error code.
    targets: Vec<(String, String)>,
    /// The last failure.
    detail: String,
}

impl Info {
    fn new(x: &XmlRef) -> Info {
        Info {
            path: x.path.clone(),
            first_seen: Instant::now(),
            first_seen_at: Timestamp::now(),
            record_id: None,
            targets: Vec::new(),
            detail: String::new(),
        }
    }

    /// A worker's report: its id, which targets failed or worked, the
    /// failure.
    fn learn(&mut self, rep: &Report) {
        if rep.record_id.is_some() {
            self.record_id = rep.record_id.clone();
        }
        for t in rep.tallies.iter().filter(|t| !t.target_id.is_empty()) {
            match t.action {
                "export" => self.targets.retain(|(id, _)| *id != t.target_id),
                "error" => match self.targets.iter_mut().find(|(id, _)| *id == t.target_id) {
                    Some(e) => e.1 = t.code.clone(),
                    None => self.targets.push((t.target_id.clone(), t.code.clone())),
                },
                _ => {}
            }
        }
        if let Outcome::Retry(m) | Outcome::Failed(m) | Outcome::NeedKey(m) | Outcome::Young(m) =
            &rep.outcome
        {
            self.detail = m.clone();
        }
    }

    /// The targets it waits for (a failure of the target itself, not of
    /// the record's files).
    fn waits_for_targets(&self) -> impl Iterator<Item = &str> {
        self.targets
            .iter()
            .filter(|(_, code)| health::State::of_code(code).is_some())
            .map(|(id, _)| id.as_str())
    }
}

struct Pending {
    xml: XmlRef,
    deadline: Option<Instant>,
    missing: Vec<PathBuf>,
}

struct Retry {
    xml: XmlRef,
    at: Instant,
    attempt: u32,
    opts: Options,
}

/// The schedule room.
pub struct Schedule {
    workers: usize,
    grace: Duration,
    until_idle: bool,
    queue: VecDeque<(XmlRef, Options)>,
    queued: HashSet<PathKey>,
    inflight: HashSet<PathKey>,
    dirty: HashMap<PathKey, XmlRef>,
    incomplete: HashMap<PathKey, Pending>,
    waiting_files: HashMap<PathBuf, HashSet<PathKey>>,
    retry: HashMap<PathKey, Retry>,
    /// Record, message, waiting for a key.
    blocked: HashMap<PathKey, (XmlRef, String, bool)>,
    failures: HashMap<PathKey, String>,
    attempts: HashMap<PathKey, u32>,
    /// Each unfinished record: when first seen, what it waits on.
    info: HashMap<PathKey, Info>,
    /// Records whose listed files are all there but some still being
    /// written (those files).
    writing_wait: HashMap<PathKey, (XmlRef, Vec<PathBuf>)>,
}

impl Schedule {
    /// An empty schedule: `workers` at once, `grace_s` for missing files.
    pub fn new(workers: usize, grace_s: u64, until_idle: bool) -> Schedule {
        Schedule {
            workers,
            grace: Duration::from_secs(grace_s),
            until_idle,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            inflight: HashSet::new(),
            dirty: HashMap::new(),
            incomplete: HashMap::new(),
            waiting_files: HashMap::new(),
            retry: HashMap::new(),
            blocked: HashMap::new(),
            failures: HashMap::new(),
            attempts: HashMap::new(),
            info: HashMap::new(),
            writing_wait: HashMap::new(),
        }
    }

    /// After a reload.
    pub fn set_limits(&mut self, workers: usize, grace_s: u64) {
        self.workers = workers;
        self.grace = Duration::from_secs(grace_s);
    }

    /// Records queued (not yet running).
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// No record is running.
    pub fn none_in_flight(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Stop: nothing more is started.
    pub fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued.clear();
    }

    /// Queues a record (or marks a running one to run again).
    pub fn enqueue(&mut self, x: XmlRef, o: Options) {
        self.info.entry(x.key).or_insert_with(|| Info::new(&x));
        if self.inflight.contains(&x.key) {
            debug!(path = %x.path.display(), "changed while a worker is on it: queued again after");
            self.dirty.insert(x.key, x);
            return;
        }
        if self.queued.insert(x.key) {
            debug!(path = %x.path.display(), from_scan = o.from_scan, grace_expired = o.grace_expired, "queued");
            self.retry.remove(&x.key);
            self.queue.push_back((x, o));
        }
    }

    /// Starts queued records while workers are free.
    pub fn dispatch(&mut self, start: &mut dyn FnMut(XmlRef, Options)) {
        while self.inflight.len() < self.workers {
            let Some((x, o)) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&x.key);
            self.inflight.insert(x.key);
            start(x, o);
        }
    }

    /// Nothing queued, running or waiting with a timer.
    pub fn idle(&self) -> bool {
        self.writing_wait.is_empty()
            && self.queue.is_empty()
            && self.inflight.is_empty()
            && self.retry.is_empty()
            && self.incomplete.values().all(|p| p.deadline.is_none())
    }

    /// The next grace expiry or retry.
    pub fn next_timer(&self) -> Option<Instant> {
        let a = self.incomplete.values().filter_map(|p| p.deadline).min();
        let b = self.retry.values().map(|r| r.at).min();
        [a, b].into_iter().flatten().min()
    }

    /// Grace periods and retries whose time has come: queued again.
    pub fn fire(&mut self, now: Instant) {
        let due: Vec<PathKey> = self
            .incomplete
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(p) = self.incomplete.get_mut(&k) {
                p.deadline = None;
                let x = p.xml.clone();
                self.enqueue(
                    x,
                    Options {
                        grace_expired: true,
                        from_scan: false,
                    },
                );
            }
        }
        let due: Vec<PathKey> = self
            .retry
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(r) = self.retry.remove(&k) {
                // keep the attempt count for the next backoff
                self.attempts.insert(k, r.attempt);
                self.enqueue(r.xml, r.opts);
            }
        }
    }

    /// A content file is complete now: records waiting for it go again.
    pub fn file_complete(&mut self, path: &Path) {
        let Some(keys) = self.waiting_files.remove(path) else {
            return;
        };
        for k in keys {
            if let Some((x, _)) = self.writing_wait.remove(&k) {
                debug!(path = %x.path.display(), file = %path.display(), "a file it waited for is complete");
                self.enqueue(x, Options::default());
                continue;
            }
            if let Some(p) = self.incomplete.get(&k) {
                let expired = p.deadline.is_none();
                let x = p.xml.clone();
                self.enqueue(
                    x,
                    Options {
                        grace_expired: expired,
                        from_scan: false,
                    },
                );
            }
        }
    }

    /// A target works again: the records waiting to retry a copy to it are
    /// due now.
    pub fn retry_now(&mut self, target: &str) {
        let now = Instant::now();
        for (k, r) in self.retry.iter_mut() {
            let waits = self
                .info
                .get(k)
                .is_some_and(|i| i.waits_for_targets().any(|t| t == target));
            if waits && r.at > now {
                r.at = now;
            }
        }
    }

    /// Drops every wait, retry and failure kept for a record version that
    /// needs nothing more.
    pub fn settle(&mut self, key: PathKey) {
        self.info.remove(&key);
        // The files it waited for wait for it no more: a file that never
        // shows up again (its folder deleted with the XML) would otherwise
        // keep an entry for ever.
        let mut files = Vec::new();
        if let Some((_, f)) = self.writing_wait.remove(&key) {
            files.extend(f);
        }
        if let Some(p) = self.incomplete.remove(&key) {
            files.extend(p.missing);
        }
        for f in files {
            if let Some(keys) = self.waiting_files.get_mut(&f) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.waiting_files.remove(&f);
                }
            }
        }
        self.retry.remove(&key);
        self.blocked.remove(&key);
        self.failures.remove(&key);
    }

    /// Queues again the blocked records (only those waiting for a key with
    /// `keys_only`).
    pub fn release_blocked(&mut self, keys_only: bool) {
        let keys: Vec<PathKey> = self
            .blocked
            .iter()
            .filter(|(_, v)| !keys_only || v.2)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some((x, _, _)) = self.blocked.remove(&k) {
                self.failures.remove(&k);
                self.enqueue(x, Options::default());
            }
        }
    }

    /// The queue's size.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            backlog: (self.queue.len()
                + self.inflight.len()
                + self.incomplete.len()
                + self.retry.len()
                + self.writing_wait.len()) as u64,
            retrying: self.retry.len() as u64,
            blocked: self.blocked.len() as u64,
            incomplete: self.incomplete.len() as u64,
            oldest: self.info.values().map(|i| i.first_seen_at).min(),
        }
    }

    /// Records waiting for missing files (cheap: for every report).
    pub fn incomplete_len(&self) -> u64 {
        self.incomplete.len() as u64
    }

    /// Records failed now (and not exported since).
    pub fn failed_len(&self) -> u64 {
        self.failures.len() as u64
    }

    /// Records waiting for each target (retried, or blocked on a refusal).
    pub fn pending_by_target(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        let waiting = self.retry.keys().chain(self.blocked.keys());
        for info in waiting.filter_map(|k| self.info.get(k)) {
            for t in info.waits_for_targets() {
                *m.entry(t.to_string()).or_default() += 1;
            }
        }
        m
    }

    /// The `cap` oldest unfinished records and what each waits on, with the
    /// total. Memory: `cap` entries, whatever the backlog.
    pub fn pending(&self, cap: usize) -> PendingList {
        let mut heap: std::collections::BinaryHeap<(Timestamp, Instant, PathKey)> =
            std::collections::BinaryHeap::with_capacity(cap + 1);
        for (k, i) in &self.info {
            heap.push((i.first_seen_at, i.first_seen, *k));
            if heap.len() > cap {
                heap.pop();
            }
        }
        let records = heap
            .into_sorted_vec()
            .into_iter()
            .filter_map(|(_, _, k)| self.pending_one(&k))
            .collect();
        PendingList {
            updated_at: Timestamp::now().rfc3339().to_string(),
            total: self.info.len() as u64,
            records,
        }
    }

    /// What one unfinished record waits on.
    fn pending_one(&self, key: &PathKey) -> Option<PendingRecord> {
        let info = self.info.get(key)?;
        let mut p = PendingRecord {
            path: info.path.display().to_string(),
            record: info.record_id.clone(),
            since: info.first_seen_at.rfc3339().to_string(),
            waits_on: Wait::Queued,
            files: Vec::new(),
            targets: Vec::new(),
            until: None,
            detail: String::new(),
        };
        let shown = |paths: &[PathBuf]| paths.iter().map(|f| f.display().to_string()).collect();
        if self.inflight.contains(key) {
            p.waits_on = Wait::Running;
        } else if self.queued.contains(key) {
            p.waits_on = Wait::Queued;
        } else if let Some((_, files)) = self.writing_wait.get(key) {
            p.waits_on = Wait::FileBeingWritten;
            p.files = shown(files);
        } else if let Some(inc) = self.incomplete.get(key) {
            p.waits_on = Wait::MissingFile;
            p.files = shown(&inc.missing);
            p.until = inc.deadline.map(wall_clock);
            if inc.deadline.is_none() {
                p.detail =
                    "grace period over: reported incomplete; exported when the files appear".into();
            }
        } else if let Some(r) = self.retry.get(key) {
            p.targets = info.waits_for_targets().map(String::from).collect();
            p.waits_on = if p.targets.is_empty() {
                Wait::Retry
            } else {
                Wait::Target
            };
            p.until = Some(wall_clock(r.at));
            p.detail = info.detail.clone();
        } else if let Some((_, msg, need_key)) = self.blocked.get(key) {
            p.waits_on = if *need_key { Wait::Key } else { Wait::Config };
            p.targets = info.waits_for_targets().map(String::from).collect();
            p.detail = msg.clone();
        }
        Some(p)
    }

    /// The failures of records still failed, sorted.
    pub fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self.failures.values().cloned().collect();
        failures.sort();
        failures
    }

    /// A worker finished a record: what its report means, done.
    pub fn on_report(&mut self, rep: &Report, o: Options) -> Counted {
        let key = rep.xml.key;
        self.inflight.remove(&key);
        let prev_attempt = self.attempts.remove(&key);
        let v = verdict(&rep.outcome, prev_attempt, o, self.until_idle);
        debug!(path = %rep.xml.path.display(), record = rep.record_id.as_deref().unwrap_or(""), verdict = ?v, "worker report");
        let mut counted = Counted::default();
        if let Some(info) = self.info.get_mut(&key) {
            info.learn(rep);
            if v == Verdict::Finished(journal::Outcome::Exported) {
                counted.latency = Some(info.first_seen.elapsed());
            }
        }
        counted.settled = matches!(
            v,
            Verdict::Finished(journal::Outcome::Exported | journal::Outcome::Skipped)
                | Verdict::AlreadyDone
                | Verdict::Forget
        );
        let failure = self.apply(rep, o, v, &mut counted);
        if let Some((code, msg)) = failure {
            counted.failure = Some(self.fail(rep, code, msg));
        }
        if let Some(x) = self.dirty.remove(&key) {
            self.enqueue(x, Options::default());
        }
        counted.failed_now = self.failed_len();
        counted
    }

    /// Carries out a verdict; returns the failure to report, if any.
    fn apply(
        &mut self,
        rep: &Report,
        o: Options,
        v: Verdict<'_>,
        c: &mut Counted,
    ) -> Option<(String, String)> {
        let key = rep.xml.key;
        match v {
            Verdict::Finished(out) => {
                self.settle(key);
                c.finished = Some(out);
                if out == journal::Outcome::Rejected {
                    let (why, msg) = match rep.tallies.last() {
                        Some(t) if !t.desc.is_empty() => {
                            (t.code.clone(), format!("rejected ({}): {}", t.code, t.desc))
                        }
                        Some(t) => (t.code.clone(), format!("rejected ({})", t.code)),
                        None => ("rejected".into(), "rejected".into()),
                    };
                    return Some((why, msg));
                }
            }
            Verdict::WaitFiles { missing, give_up } => {
                return self.wait_files(rep, missing, give_up);
            }
            Verdict::GiveUp { attempt, msg } => {
                c.failed = true;
                let msg = format!("gave up after {attempt} attempts: {msg}");
                return Some(("target_unavailable".into(), msg));
            }
            Verdict::RetryLater { attempt, msg } => {
                let backoff = backoff(attempt);
                // A target outage is logged once by the status room; a
                // record's own transient failure once, at its first attempt.
                let of_target = self
                    .info
                    .get(&key)
                    .is_some_and(|i| i.waits_for_targets().next().is_some());
                let secs = backoff.as_secs_f64();
                if attempt == 1 && !of_target {
                    log_record!(
                        warn,
                        rep,
                        attempt,
                        "retrying in {secs:.1} s, then with backoff (logged once; `exportd status --pending` shows it): {msg}"
                    );
                } else {
                    log_record!(debug, rep, attempt, "retry scheduled in {secs:.1} s: {msg}");
                }
                self.retry_later(rep, backoff, attempt, o);
            }
            Verdict::Blocked { need_key, msg } => {
                c.failed = true;
                self.blocked
                    .insert(key, (rep.xml.clone(), msg.to_string(), need_key));
                return Some(if need_key {
                    ("no_identity".into(), msg.to_string())
                } else {
                    (
                        "failed".into(),
                        format!("{msg} (retried after a configuration change)"),
                    )
                });
            }
            Verdict::Forget => {
                self.settle(key);
                c.forget = true;
            }
            Verdict::WaitWriting(files) => {
                for m in files {
                    self.waiting_files.entry(m.clone()).or_default().insert(key);
                }
                log_record!(debug, rep, "waits for files still being written: {files:?}");
                self.writing_wait
                    .insert(key, (rep.xml.clone(), files.to_vec()));
            }
            Verdict::AlreadyDone => self.settle(key),
            Verdict::Young { attempt, from_scan } => {
                let opts = Options { from_scan, ..o };
                self.retry_later(rep, YOUNG_RETRY, attempt, opts);
            }
        }
        None
    }

    /// Listed files are missing: wait for them (with a grace timer the
    /// first time, none once given up).
    fn wait_files(
        &mut self,
        rep: &Report,
        missing: &[PathBuf],
        give_up: bool,
    ) -> Option<(String, String)> {
        let key = rep.xml.key;
        for m in missing {
            self.waiting_files.entry(m.clone()).or_default().insert(key);
        }
        let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        let grace = self.grace;
        let entry = self.incomplete.entry(key).or_insert_with(|| Pending {
            xml: rep.xml.clone(),
            deadline: Some(Instant::now() + grace),
            missing: missing.to_vec(),
        });
        entry.xml = rep.xml.clone();
        entry.missing = missing.to_vec();
        log_record!(
            debug,
            rep,
            "waits for missing files (grace until reported: {:?}): {list:?}",
            entry
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
        );
        if give_up {
            entry.deadline = None;
            let msg = format!("incomplete: missing {}", list.join(", "));
            return Some(("incomplete".into(), msg));
        }
        None
    }

    fn retry_later(&mut self, rep: &Report, after: Duration, attempt: u32, opts: Options) {
        self.retry.insert(
            rep.xml.key,
            Retry {
                xml: rep.xml.clone(),
                at: Instant::now() + after,
                attempt,
                opts,
            },
        );
    }

    /// Logs a record's failure and keeps it for the run's summary.
    fn fail(&mut self, rep: &Report, code: String, msg: String) -> Failure {
        let name = record_name(rep);
        log_record!(warn, rep, code = code.as_str(), "{msg}");
        self.failures.insert(rep.xml.key, format!("{name}: {msg}"));
        Failure {
            path: rep.xml.path.clone(),
            record: rep.record_id.clone().unwrap_or_default(),
            code,
            message: msg,
        }
    }
}

/// The wall-clock time of an instant (RFC 3339).
fn wall_clock(at: Instant) -> String {
    let now = Instant::now();
    let ms = if at >= now {
        at.duration_since(now).as_millis() as i64
    } else {
        -(now.duration_since(at).as_millis() as i64)
    };
    Timestamp(Timestamp::now().0 + ms).rfc3339().to_string()
}

/// `path (record id)`, as in the log.
fn record_name(rep: &Report) -> String {
    let path = rep.xml.path.display().to_string();
    match &rep.record_id {
        Some(id) => format!("{path} ({id})"),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCAN: Options = Options {
        grace_expired: false,
        from_scan: true,
    };

    fn xml(name: &str) -> XmlRef {
        let mut key = [0u8; 16];
        key[..name.len()].copy_from_slice(name.as_bytes());
        XmlRef {
            root: "/s".into(),
            rel: format!("{name}.xml"),
            path: format!("/s/{name}.xml").into(),
            size: 1,
            mtime_ns: 1,
            key,
        }
    }

    fn report(name: &str, outcome: Outcome, tallies: &[(&'static str, &str)]) -> Report {
        Report {
            xml: xml(name),
            record_id: Some(format!("id-{name}")),
            outcome,
            tallies: tallies
                .iter()
                .map(|(action, code)| crate::export::Tally {
                    action,
                    policy_id: "p".into(),
                    target_id: "t0".into(),
                    code: code.to_string(),
                    desc: "t0: Read-only file system".into(),
                    bytes: 0,
                })
                .collect(),
        }
    }

    /// A record settled (its XML deleted, or finished after a rescan)
    /// while it waited for files leaves no entry behind for those files.
    #[test]
    fn a_settled_record_leaves_no_file_waiting_for_it() {
        let mut s = Schedule::new(2, 300, false);
        let run = |s: &mut Schedule, rep: Report| {
            s.enqueue(rep.xml.clone(), Options::default());
            s.dispatch(&mut |x, _| assert_eq!(x.key, rep.xml.key));
            s.on_report(&rep, Options::default())
        };
        let w: PathBuf = "/s/w.wav".into();
        let m: PathBuf = "/s/m.wav".into();
        run(&mut s, report("w", Outcome::Writing(vec![w.clone()]), &[]));
        let missing = Outcome::Incomplete {
            missing: vec![m.clone()],
            reported: false,
        };
        run(&mut s, report("m", missing, &[]));
        run(
            &mut s,
            report("both", Outcome::Writing(vec![w.clone()]), &[]),
        );
        assert_eq!(s.waiting_files.len(), 2);
        s.settle(xml("w").key);
        s.settle(xml("m").key);
        assert_eq!(s.waiting_files.len(), 1, "{:?}", s.waiting_files);
        assert!(s.waiting_files[&w].contains(&xml("both").key));
        s.settle(xml("both").key);
        assert!(s.waiting_files.is_empty(), "{:?}", s.waiting_files);
        assert!(s.idle());
    }

    #[test]
    fn pending_says_what_each_record_waits_on_oldest_first_capped() {
        let mut s = Schedule::new(1, 300, false);
        for n in ["a", "b", "c", "d", "e"] {
            s.enqueue(xml(n), Options::default());
        }
        let run = |s: &mut Schedule, rep: Report| {
            s.dispatch(&mut |x, _| assert_eq!(x.key, rep.xml.key));
            s.on_report(&rep, Options::default())
        };
        let p = s.pending(10);
        assert_eq!(p.total, 5);
        let waits: Vec<Wait> = p.records.iter().map(|r| r.waits_on).collect();
        assert_eq!(waits, [Wait::Queued; 5]);
        let down = Outcome::Retry("t0: Read-only file system".into());
        run(
            &mut s,
            report("a", down, &[("error", "target_unavailable")]),
        );
        run(
            &mut s,
            report("b", Outcome::Writing(vec!["/s/b.wav".into()]), &[]),
        );
        let missing = Outcome::Incomplete {
            missing: vec!["/s/c.wav".into()],
            reported: false,
        };
        run(&mut s, report("c", missing, &[]));
        run(
            &mut s,
            report("d", Outcome::NeedKey("no identity opens it".into()), &[]),
        );
        // A record's own transient failure (the spool) is not the target's.
        run(
            &mut s,
            report(
                "e",
                Outcome::Retry("EIO".into()),
                &[("error", "source_unavailable")],
            ),
        );
        let p = s.pending(10);
        let got: Vec<(&str, Wait, Vec<String>, Vec<String>)> = p
            .records
            .iter()
            .map(|r| {
                (
                    r.path.as_str(),
                    r.waits_on,
                    r.files.clone(),
                    r.targets.clone(),
                )
            })
            .collect();
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                ("/s/a.xml", Wait::Target, v(&[]), v(&["t0"])),
                ("/s/b.xml", Wait::FileBeingWritten, v(&["/s/b.wav"]), v(&[])),
                ("/s/c.xml", Wait::MissingFile, v(&["/s/c.wav"]), v(&[])),
                ("/s/d.xml", Wait::Key, v(&[]), v(&[])),
                ("/s/e.xml", Wait::Retry, v(&[]), v(&[])),
            ]
        );
        assert_eq!(p.records[0].record.as_deref(), Some("id-a"));
        assert!(p.records[0].detail.contains("Read-only"));
        assert!(p.records[0].until.is_some(), "the next attempt");
        assert!(p.records[2].until.is_some(), "the end of the grace");
        assert_eq!(
            s.pending_by_target(),
            BTreeMap::from([("t0".to_string(), 1)])
        );
        // t0 works again: a's retry is due now, e's (the spool) is not.
        s.retry_now("t0");
        let due_now = |s: &Schedule| s.retry.values().filter(|r| r.at <= Instant::now()).count();
        assert_eq!(due_now(&s), 1);
        // Capped: the oldest first, with the total.
        let p = s.pending(2);
        assert_eq!((p.total, p.records.len()), (5, 2));
        assert_eq!(p.records[1].path, "/s/b.xml");
        // a works again: settled, with its latency; no longer pending.
        s.set_limits(10, 300);
        s.fire(Instant::now() + Duration::from_secs(10));
        s.dispatch(&mut |_, _| {});
        let done = report(
            "a",
            Outcome::Finished(journal::Outcome::Exported),
            &[("export", "")],
        );
        let c = s.on_report(&done, Options::default());
        assert!(c.settled && c.latency.is_some(), "{c:?}");
        assert_eq!(s.pending(10).total, 4);
        assert!(s.pending_by_target().is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_jitter() {
        let ms = |a, j| backoff_with(a, j).as_millis();
        assert_eq!(ms(1, 0), 875);
        assert_eq!(ms(1, 250), 1125);
        assert_eq!(ms(1, 251), 875);
        assert_eq!(ms(3, 0), 3500);
        assert_eq!(ms(20, 0), 224_000);
        let b = backoff(2).as_millis();
        assert!((1750..=2250).contains(&b), "{b}");
    }

    #[test]
    fn finished_and_done() {
        let v = verdict(
            &Outcome::Finished(journal::Outcome::Exported),
            None,
            SCAN,
            false,
        );
        assert_eq!(v, Verdict::Finished(journal::Outcome::Exported));
        assert_eq!(
            verdict(&Outcome::AlreadyDone, Some(2), SCAN, false),
            Verdict::AlreadyDone
        );
        assert_eq!(
            verdict(&Outcome::Vanished, None, SCAN, true),
            Verdict::Forget
        );
        assert_eq!(
            verdict(&Outcome::Writing(vec![]), None, SCAN, true),
            Verdict::WaitWriting(&[])
        );
    }

    #[test]
    fn missing_files_give_up_once_reported_or_after_grace() {
        let inc = |reported| Outcome::Incomplete {
            missing: vec![PathBuf::from("/s/a.wav")],
            reported,
        };
        let missing = [PathBuf::from("/s/a.wav")];
        let wait = |give_up| Verdict::WaitFiles {
            missing: &missing,
            give_up,
        };
        assert_eq!(verdict(&inc(false), None, SCAN, false), wait(false));
        assert_eq!(verdict(&inc(true), None, SCAN, false), wait(true));
        let expired = Options {
            grace_expired: true,
            from_scan: false,
        };
        assert_eq!(verdict(&inc(false), None, expired, false), wait(true));
    }

    #[test]
    fn transient_failures_retry_and_give_up_only_until_idle() {
        let r = Outcome::Retry("down".into());
        assert_eq!(
            verdict(&r, None, SCAN, false),
            Verdict::RetryLater {
                attempt: 1,
                msg: "down"
            }
        );
        assert_eq!(
            verdict(&r, Some(3), SCAN, false),
            Verdict::RetryLater {
                attempt: 4,
                msg: "down"
            }
        );
        assert_eq!(
            verdict(&r, Some(2), SCAN, true),
            Verdict::RetryLater {
                attempt: 3,
                msg: "down"
            }
        );
        assert_eq!(
            verdict(&r, Some(3), SCAN, true),
            Verdict::GiveUp {
                attempt: 4,
                msg: "down"
            }
        );
    }

    #[test]
    fn refusals_block() {
        assert_eq!(
            verdict(&Outcome::Failed("403".into()), None, SCAN, false),
            Verdict::Blocked {
                need_key: false,
                msg: "403"
            }
        );
        assert_eq!(
            verdict(&Outcome::NeedKey("no key".into()), None, SCAN, false),
            Verdict::Blocked {
                need_key: true,
                msg: "no key"
            }
        );
    }

    #[test]
    fn young_xml_stops_counting_as_scanned_at_the_third_attempt() {
        let y = Outcome::Young("half".into());
        assert_eq!(
            verdict(&y, None, SCAN, false),
            Verdict::Young {
                attempt: 1,
                from_scan: true
            }
        );
        assert_eq!(
            verdict(&y, Some(2), SCAN, false),
            Verdict::Young {
                attempt: 3,
                from_scan: false
            }
        );
    }
}
