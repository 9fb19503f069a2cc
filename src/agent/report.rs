//! The status room: counters, per-target health, what is degraded, the
//! status file, the pending list, the metrics file, sd_notify. Never queues
//! or runs a record.
//!
//! It keeps the daemon's counters and recent errors, written to the status
//! file (and the list of pending records, and the metrics file) at most once
//! a second after a change; systemd's status line and watchdog pings; and
//! the log lines of a target outage (once when it starts, a summary every 5
//! minutes while it lasts, once when it ends) instead of one per record.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::agent::health::{self, Health, Notice};
use crate::agent::metrics::{self, Gauges};
use crate::agent::notify;
use crate::agent::schedule::{Counted, Schedule};
use crate::agent::status::{Degraded, LastError, Latency, PENDING_SHOWN, Status};
use crate::export::{Report, Tally};
use crate::ledger::journal;
use crate::time::Timestamp;

/// How many recent errors the status file keeps.
const LAST_ERRORS: usize = 20;

/// How many of the latest exports the latency figures are over.
const LATENCIES: usize = 512;

/// The status room.
pub struct Reporter {
    status: Status,
    /// Changed since the last flush.
    dirty: bool,
    state_dir: PathBuf,
    /// Where the metrics file goes.
    metrics_file: PathBuf,
    /// The status as last flushed, for the central heartbeat.
    shared: Arc<Mutex<Status>>,
    /// The last configuration apply: success, unix seconds.
    last_apply: Option<(bool, f64)>,
    next_flush: Option<Instant>,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    /// Each target's state.
    health: Health,
    /// Spool roots that cannot be listed: since, why.
    spool_down: BTreeMap<PathBuf, (Timestamp, String)>,
    /// Central configured but not running: since, why.
    central_down: Option<(Timestamp, String)>,
    /// Since when the inotify watch limit keeps folders unwatched.
    watch_limit: Option<Timestamp>,
    /// Latency of the latest exports, milliseconds.
    latencies: VecDeque<u64>,
}

impl Reporter {
    /// A running agent's status (written at the first flush); the metrics
    /// go to `metrics_file`.
    pub fn new(
        agent_id: &str,
        model_version: u64,
        state_dir: &Path,
        metrics_file: PathBuf,
    ) -> Reporter {
        Reporter {
            status: Status {
                agent_id: agent_id.to_string(),
                pid: std::process::id(),
                state: "running".into(),
                started_at: Timestamp::now().rfc3339().to_string(),
                model_version,
                ..Status::default()
            },
            dirty: true,
            state_dir: state_dir.to_path_buf(),
            metrics_file,
            shared: Arc::new(Mutex::new(Status::default())),
            last_apply: None,
            next_flush: None,
            watchdog: None,
            next_watchdog: None,
            health: Health::default(),
            spool_down: BTreeMap::new(),
            central_down: None,
            watch_limit: None,
            latencies: VecDeque::with_capacity(LATENCIES),
        }
    }

    /// The status as last flushed (shared with the central poller).
    pub fn shared(&self) -> Arc<Mutex<Status>> {
        self.shared.clone()
    }

    /// The status now.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Tells systemd the agent is ready, and starts the watchdog pings it asked for.
    pub fn ready(&mut self) {
        notify::notify("READY=1");
        self.watchdog = notify::watchdog_interval();
        self.next_watchdog = self.watchdog.map(|d| Instant::now() + d);
    }

    /// Something shown in the status changed.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// After a change, the status is written within a second.
    pub fn arm(&mut self) {
        if self.dirty && self.next_flush.is_none() {
            self.next_flush = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    /// The next flush, watchdog ping or outage summary.
    pub fn next_timer(&self) -> Option<Instant> {
        let summary = self.health.next_due().map(|t| {
            let ms = (t.0 - Timestamp::now().0).max(0) as u64;
            Instant::now() + Duration::from_millis(ms)
        });
        [self.next_flush, self.next_watchdog, summary]
            .into_iter()
            .flatten()
            .min()
    }

    /// Flushes, pings and sums up outages when their time has come.
    pub fn fire(&mut self, now: Instant, schedule: &Schedule, model_version: u64) {
        let due = self.health.due(Timestamp::now());
        if !due.is_empty() {
            let pending = schedule.pending_by_target();
            for n in due {
                log_notice(&n, &pending);
            }
        }
        if self.next_flush.is_some_and(|d| d <= now) {
            self.next_flush = None;
            self.flush(schedule, model_version);
        }
        if self.next_watchdog.is_some_and(|d| d <= now) {
            notify::notify("WATCHDOG=1");
            self.next_watchdog = self.watchdog.map(|d| now + d);
        }
    }

    /// The targets of the model in force (at start and after a swap).
    pub fn set_targets(&mut self, ids: &[String]) {
        self.health.set_targets(ids, Timestamp::now());
        self.dirty = true;
    }

    /// Central is configured but does not run (`why`: what to fix).
    pub fn central_disabled(&mut self, why: String) {
        self.central_down = Some((Timestamp::now(), why));
        self.dirty = true;
    }

    /// The spool roots that cannot be listed now (missing, unreadable, or
    /// empty while the journal knows records from them).
    pub fn spool_roots_in_doubt(&mut self, roots: &[PathBuf]) {
        let before = self.spool_down.len();
        self.spool_down.retain(|r, _| {
            let keep = roots.contains(r);
            if !keep {
                info!(root = %r.display(), "spool root {} can be listed again", r.display());
            }
            keep
        });
        let mut changed = before != self.spool_down.len();
        for r in roots {
            if !self.spool_down.contains_key(r) {
                let why = "cannot be listed (missing, unreadable, or empty while the journal knows records from it: not mounted?); listed again with backoff".to_string();
                self.spool_down.insert(r.clone(), (Timestamp::now(), why));
                changed = true;
            }
        }
        if changed {
            self.dirty = true;
        }
    }

    /// Whether the inotify watch limit keeps spool folders unwatched now.
    pub fn watch_limit_reached(&mut self, reached: bool) {
        if reached != self.watch_limit.is_some() {
            self.watch_limit = reached.then(Timestamp::now);
            if !reached {
                info!("every spool folder is watched again (below the inotify watch limit)");
            }
            self.dirty = true;
        }
    }

    /// Remembers an error for `status` (newest last, the last 20).
    pub fn note_error(&mut self, path: &Path, code: &str, message: String) {
        self.push_error(LastError {
            at: Timestamp::now().rfc3339().to_string(),
            path: path.display().to_string(),
            code: code.to_string(),
            message: message.clone(),
            record: String::new(),
            target: String::new(),
        });
        if code == "spool_unavailable" {
            self.spool_down
                .insert(path.to_path_buf(), (Timestamp::now(), message));
        }
    }

    fn push_error(&mut self, e: LastError) {
        self.status.last_errors.push(e);
        if self.status.last_errors.len() > LAST_ERRORS {
            self.status.last_errors.remove(0);
        }
        self.dirty = true;
    }

    /// Counts a worker's audit rows, logs each export and skip, and follows
    /// each target's health from them; returns the targets that work again
    /// (an outage ended).
    pub fn count_rows(&mut self, rep: &Report) -> Vec<String> {
        self.dirty = true;
        let mut back = Vec::new();
        let record = rep.record_id.as_deref().unwrap_or("");
        let path = rep.xml.path.display().to_string();
        for t in &rep.tallies {
            match t.action {
                "export" => {
                    if self.count_export(t, record, &path) {
                        back.push(t.target_id.clone());
                    }
                }
                "skip" => {
                    *self
                        .status
                        .skipped_by_reason
                        .entry(t.code.clone())
                        .or_default() += 1;
                    info!(record, path, policy = %t.policy_id, target = %t.target_id, reason = %t.code, "skipped: {}", t.desc);
                }
                _ => self.count_error(t, record, &path),
            }
        }
        back
    }

    /// An export row; true when it ends its target's outage.
    fn count_export(&mut self, t: &Tally, record: &str, path: &str) -> bool {
        let st = &mut self.status;
        let pt = format!("{}/{}", t.policy_id, t.target_id);
        *st.exported_by_policy_target.entry(pt.clone()).or_default() += 1;
        *st.bytes_by_policy_target.entry(pt).or_default() += t.bytes;
        st.counts.bytes += t.bytes;
        info!(record, path, policy = %t.policy_id, target = %t.target_id, bytes = t.bytes, "exported");
        match self.health.exported(&t.target_id, Timestamp::now()) {
            Some(n) => {
                log_notice(&n, &BTreeMap::new());
                true
            }
            None => false,
        }
    }

    fn count_error(&mut self, t: &Tally, record: &str, path: &str) {
        let st = &mut self.status;
        *st.errors_by_code.entry(t.code.clone()).or_default() += 1;
        *st.errors_by_target
            .entry(t.target_id.clone())
            .or_default()
            .entry(t.code.clone())
            .or_default() += 1;
        // The record's own failures are logged by the schedule (once per
        // record); a target's outage once, below.
        debug!(record, path, policy = %t.policy_id, target = %t.target_id, code = %t.code, "error row: {}", t.desc);
        if t.target_id.is_empty() {
            return;
        }
        let f = health::Failure {
            code: &t.code,
            message: &t.desc,
            record,
            path,
        };
        if let Some(n) = self.health.failed(&t.target_id, &f, Timestamp::now()) {
            log_notice(&n, &BTreeMap::new());
        }
    }

    /// Counts what the schedule made of a report about the record at `path`.
    pub fn count(&mut self, c: Counted, path: &Path, incomplete: u64) {
        let counts = &mut self.status.counts;
        if let Some(out) = c.finished {
            counts.seen += 1;
            match out {
                journal::Outcome::Exported => counts.exported += 1,
                journal::Outcome::Skipped => counts.skipped += 1,
                journal::Outcome::Rejected => {}
            }
        }
        counts.failed = c.failed_now;
        counts.incomplete = incomplete;
        if c.settled {
            // What failed before and has since succeeded is no longer an error.
            let shown = path.display().to_string();
            self.status.last_errors.retain(|e| e.path != shown);
        }
        if let Some(l) = c.latency {
            if self.latencies.len() == LATENCIES {
                self.latencies.pop_front();
            }
            self.latencies.push_back(l.as_millis() as u64);
        }
        if let Some(f) = c.failure {
            self.push_error(LastError {
                at: Timestamp::now().rfc3339().to_string(),
                path: f.path.display().to_string(),
                code: f.code,
                message: f.message,
                record: f.record,
                target: String::new(),
            });
        }
        self.dirty = true;
    }

    /// A configuration was applied (or failed to be) at `at` (unix seconds).
    pub fn applied(&mut self, ok: bool, at: f64) {
        self.last_apply = Some((ok, at));
    }

    /// A bundle was rejected: `rejection` is `<time> <reason>`.
    pub fn rejected(&mut self, rejection: String) {
        self.status.last_rejection = Some(rejection);
    }

    /// The agent stops: the last status says so.
    pub fn stop(&mut self, schedule: &Schedule, model_version: u64) {
        self.status.state = "stopped".into();
        self.flush(schedule, model_version);
    }

    /// What does not work as configured.
    fn degraded(&self) -> Vec<Degraded> {
        let mut v = Vec::new();
        if let Some((since, why)) = &self.central_down {
            v.push(Degraded {
                component: "central".into(),
                subject: String::new(),
                since: since.rfc3339().to_string(),
                reason: why.clone(),
            });
        }
        if let Some(since) = &self.watch_limit {
            v.push(Degraded {
                component: "watch".into(),
                subject: String::new(),
                since: since.rfc3339().to_string(),
                reason: "the inotify watch limit is reached: folders past it are not watched, so the spool is rescanned every 30 s (records found late, none lost); raise fs.inotify.max_user_watches".into(),
            });
        }
        for (root, (since, why)) in &self.spool_down {
            v.push(Degraded {
                component: "spool".into(),
                subject: root.display().to_string(),
                since: since.rfc3339().to_string(),
                reason: why.clone(),
            });
        }
        for (id, state, since, err) in self.health.outages() {
            let reason = match err {
                Some(e) => format!("{} ({}): {}", state.as_str(), e.code, e.message),
                None => state.as_str().to_string(),
            };
            v.push(Degraded {
                component: "target".into(),
                subject: id.to_string(),
                since: since.rfc3339().to_string(),
                reason,
            });
        }
        v
    }

    fn latency(&self) -> Latency {
        let mut v: Vec<u64> = self.latencies.iter().copied().collect();
        v.sort_unstable();
        let at = |q: f64| {
            v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        Latency {
            records: v.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v.last().copied().unwrap_or(0),
        }
    }

    /// Writes the status file, the pending list and the metrics file, and
    /// tells systemd.
    pub fn flush(&mut self, schedule: &Schedule, model_version: u64) {
        self.dirty = false;
        let backlog = schedule.backlog();
        let latency = self.latency();
        let degraded = self.degraded();
        let st = &mut self.status;
        st.updated_at = Timestamp::now().rfc3339().to_string();
        st.model_version = model_version;
        st.backlog = backlog.backlog;
        st.retrying = backlog.retrying;
        st.blocked = backlog.blocked;
        st.oldest_pending_since = backlog.oldest.map(|t| t.rfc3339().to_string());
        st.last_export_at = self.health.last_export().map(|t| t.rfc3339().to_string());
        st.targets = self.health.view(&schedule.pending_by_target());
        st.latency = latency;
        st.degraded = degraded;
        let st = &self.status;
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = st.clone();
        if let Err(e) = st.write(&self.state_dir) {
            warn!(
                "cannot write {}/status.json: {e}; `exportd status` shows an old state",
                self.state_dir.display()
            );
        }
        if let Err(e) = schedule.pending(PENDING_SHOWN).write(&self.state_dir) {
            warn!(
                "cannot write {}/pending.json: {e}; `exportd status --pending` shows an old list",
                self.state_dir.display()
            );
        }
        let gauges = Gauges {
            last_apply_ok: self.last_apply.map(|a| a.0),
            last_apply_at: self.last_apply.map(|a| a.1),
        };
        if let Err(e) = metrics::write(&self.metrics_file, &metrics::render(st, &gauges)) {
            warn!(
                "cannot write the metrics file {}: {e}; check `metrics_file` and its folder",
                self.metrics_file.display()
            );
        }
        notify::notify(&notify::status_line(st));
    }
}

/// Logs a target outage's start, summary or end.
fn log_notice(n: &Notice, pending: &BTreeMap<String, u64>) {
    match n {
        Notice::Down {
            target,
            state,
            error,
        } => {
            let then = if *state == health::State::Blocked {
                "its copies wait for a configuration change"
            } else {
                "its copies wait and are retried with backoff"
            };
            warn!(target = %target, code = %error.code, "target {target} is {}: {}; {then} (logged again every 5 min while this lasts, and when it ends; `exportd status` shows it)", state.as_str(), error.message);
        }
        Notice::Still {
            target,
            state,
            for_ms,
            failures,
            error,
        } => {
            let waiting = pending.get(target).copied().unwrap_or(0);
            let last = error
                .as_ref()
                .map(|e| format!("; last error ({}): {}", e.code, e.message))
                .unwrap_or_default();
            warn!(target = %target, pending = waiting, failures, "target {target} still {} after {}: {failures} records failed on it, {waiting} wait{last}", state.as_str(), health::human_ms(*for_ms));
        }
        Notice::Up {
            target,
            after_ms,
            failures,
        } => {
            info!(target = %target, failures, "target {target} works again after {} ({failures} records had failed on it: they are retried now)", health::human_ms(*after_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::schedule::Failure;

    #[test]
    fn a_record_failed_then_exported_counts_as_exported_and_its_error_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reporter::new("a", 0, dir.path(), dir.path().join("m.prom"));
        let x = Path::new("/s/x.xml");
        r.note_error(Path::new("/s/other.xml"), "bad_metadata", "kept".into());
        r.count(
            Counted {
                failure: Some(Failure {
                    path: x.to_path_buf(),
                    record: "x".into(),
                    code: "incomplete".into(),
                    message: "incomplete: missing /s/x.wav".into(),
                }),
                failed_now: 1,
                ..Counted::default()
            },
            x,
            1,
        );
        assert_eq!(r.status().counts.failed, 1);
        assert_eq!(r.status().last_errors.len(), 2);
        assert_eq!(r.status().last_errors[1].record, "x");
        r.count(
            Counted {
                finished: Some(journal::Outcome::Exported),
                settled: true,
                latency: Some(Duration::from_millis(250)),
                ..Counted::default()
            },
            x,
            0,
        );
        let c = &r.status().counts;
        assert_eq!((c.seen, c.exported, c.failed, c.incomplete), (1, 1, 0, 0));
        let left: Vec<&str> = r
            .status()
            .last_errors
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(left, ["/s/other.xml"]);
        assert_eq!(r.latency().p50_ms, 250);
    }
}
