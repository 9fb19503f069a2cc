//! What `archive verify` prints: one line per problem on stdout (or one
//! JSON object per line with `--json`), progress on stderr, a summary.
//! Never decides what is a problem; it only counts and prints.

use std::io::Write;
use std::time::{Duration, Instant};

/// The kinds of problem, as printed first on each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An `export` row without its record folder.
    Missing,
    /// A record folder whose files do not match its row.
    Altered,
    /// A record folder without an `export` row.
    Extra,
    /// A record folder without its metadata XML.
    Incomplete,
    /// The audit log, a day file or a checkpoint does not hold.
    Audit,
}

impl Kind {
    /// The printed word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Altered => "altered",
            Kind::Extra => "extra",
            Kind::Incomplete => "incomplete",
            Kind::Audit => "audit",
        }
    }
}

/// Counters of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// The target id.
    pub target: String,
    /// Record folders found on the target.
    pub folders: u64,
    /// Files re-hashed.
    pub files: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// `export` rows that concern this target.
    pub export_rows: u64,
    /// Audit rows read.
    pub audit_rows: u64,
    /// Checkpoints on the target.
    pub checkpoints: u64,
    /// Problems found.
    pub problems: u64,
}

/// The printer and counters.
pub struct Report {
    json: bool,
    /// Problems of every target.
    pub problems: u64,
    /// The current target's counters.
    pub counts: Counts,
    /// Bytes expected (sum of the rows' `bytes`), for the ETA.
    pub expected_bytes: u64,
    started: Instant,
    last_progress: Instant,
    progress: bool,
}

impl Report {
    /// A report printing text (or JSON lines), with progress on stderr
    /// every few seconds when `progress`.
    pub fn new(json: bool, progress: bool) -> Report {
        Report {
            json,
            problems: 0,
            counts: Counts::default(),
            expected_bytes: 0,
            started: Instant::now(),
            last_progress: Instant::now(),
            progress,
        }
    }

    /// Starts a target.
    pub fn target(&mut self, id: &str) {
        self.counts = Counts {
            target: id.to_string(),
            ..Counts::default()
        };
        self.expected_bytes = 0;
        self.started = Instant::now();
    }

    /// Prints one problem: `<kind> <target> <what>[: <detail>]`.
    pub fn problem(&mut self, kind: Kind, what: &str, detail: &str) {
        self.problems += 1;
        self.counts.problems += 1;
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            let v = serde_json::json!({
                "problem": kind.as_str(),
                "target": self.counts.target,
                "what": what,
                "detail": detail,
            });
            writeln!(out, "{v}")
        } else if detail.is_empty() {
            writeln!(out, "{} {} {what}", kind.as_str(), self.counts.target)
        } else {
            writeln!(
                out,
                "{} {} {what}: {detail}",
                kind.as_str(),
                self.counts.target
            )
        };
    }

    /// A note on stderr (not a problem).
    pub fn note(&self, msg: &str) {
        eprintln!("exportd: archive verify: {}: {msg}", self.counts.target);
    }

    /// Progress on stderr, at most every 2 seconds.
    pub fn tick(&mut self) {
        if !self.progress || self.last_progress.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_progress = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.counts.bytes as f64 / secs;
        let eta = if rate > 0.0 && self.expected_bytes > self.counts.bytes {
            format!(
                ", ETA {:.0} s",
                (self.expected_bytes - self.counts.bytes) as f64 / rate
            )
        } else {
            String::new()
        };
        eprintln!(
            "exportd: archive verify: {}: {} folders, {} files, {:.1} MB, {:.1} MB/s{eta}",
            self.counts.target,
            self.counts.folders,
            self.counts.files,
            self.counts.bytes as f64 / 1e6,
            rate / 1e6
        );
    }

    /// The summary of the current target.
    pub fn target_summary(&self) {
        let c = &self.counts;
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{}", serde_json::json!({ "target_summary": c }))
        } else {
            writeln!(
                out,
                "checked {}: {} record folders ({} files, {} bytes re-hashed), {} export rows of {} audit rows, {} checkpoints: {}",
                c.target,
                c.folders,
                c.files,
                c.bytes,
                c.export_rows,
                c.audit_rows,
                c.checkpoints,
                if c.problems == 0 {
                    "OK".to_string()
                } else {
                    format!("{} problems", c.problems)
                }
            )
        };
    }

    /// The final line; returns the exit code (0 all good, 1 problems).
    pub fn finish(&self, targets: usize) -> i32 {
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"summary": {"targets": targets, "problems": self.problems, "ok": self.problems == 0}})
            )
        } else if self.problems == 0 {
            writeln!(out, "archive verify: OK ({targets} targets)")
        } else {
            writeln!(
                out,
                "archive verify: FAILED, {} problems ({targets} targets)",
                self.problems
            )
        };
        i32::from(self.problems > 0)
    }
}
