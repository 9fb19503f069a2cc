//! `exportd top`: a live view of the daemon from its status file (like
//! `vector top`): throughput, backlog per target, latency, what is degraded,
//! recent errors. On a terminal the screen is redrawn every interval; into
//! a pipe or file one plain snapshot per interval (no escape codes), or one
//! JSON object per line with `--json`. Reads only; q + Enter or Ctrl-C
//! quits.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use exportd::agent::status::Status;
use exportd::time::Timestamp;

use crate::cli::status::{ago, alive};

/// A status read, and when.
struct Sample {
    at: Instant,
    exported: u64,
    copies: u64,
    bytes: u64,
}

impl Sample {
    fn of(s: &Status) -> Sample {
        Sample {
            at: Instant::now(),
            exported: s.counts.exported,
            copies: s.exported_by_policy_target.values().sum(),
            bytes: s.counts.bytes,
        }
    }
}

/// Rates between two samples: records/s, copies/s, bytes/s.
fn rates(prev: Option<&Sample>, cur: &Sample) -> Option<(f64, f64, f64)> {
    let p = prev?;
    let dt = cur.at.duration_since(p.at).as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
    Some((
        d(cur.exported, p.exported),
        d(cur.copies, p.copies),
        d(cur.bytes, p.bytes),
    ))
}

fn age_of(t: &str, now: Timestamp) -> String {
    Timestamp::parse_rfc3339(t)
        .map(|at| ago(now.0 - at.0))
        .unwrap_or_else(|_| t.to_string())
}

/// One screen (plain text).
fn render(s: &Status, r: Option<(f64, f64, f64)>, now: Timestamp, interval: Duration) -> String {
    let mut o = String::new();
    let mut line = |l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    let run = if alive(s) {
        format!("running, pid {}", s.pid)
    } else {
        "NOT RUNNING".into()
    };
    line(format!(
        "exportd top: agent {} ({run}), status of {} ago, every {:.1} s; q + Enter or Ctrl-C quits",
        s.agent_id,
        age_of(&s.updated_at, now),
        interval.as_secs_f64()
    ));
    let rate = match r {
        Some((rec, copies, bytes)) => format!(
            "{rec:.1} records/s, {copies:.1} copies/s, {}/s",
            exportd::human::bytes_f(bytes)
        ),
        None => "(measured from the next refresh)".into(),
    };
    line(format!("throughput  {rate}"));
    line(format!(
        "totals      exported {}, skipped {}, failed now {}, {} written",
        s.counts.exported,
        s.counts.skipped,
        s.counts.failed,
        exportd::human::bytes_f(s.counts.bytes as f64)
    ));
    let oldest = s
        .oldest_pending_since
        .as_deref()
        .map(|t| format!(", oldest pending {}", age_of(t, now)))
        .unwrap_or_default();
    line(format!(
        "backlog     {} (retrying {}, blocked {}, incomplete {}){oldest}",
        s.backlog, s.retrying, s.blocked, s.counts.incomplete
    ));
    let l = &s.latency;
    if l.records > 0 {
        line(format!(
            "latency     p50 {}, p99 {}, max {} (last {} records)",
            ago(l.p50_ms as i64),
            ago(l.p99_ms as i64),
            ago(l.max_ms as i64),
            l.records
        ));
    }
    line(String::new());
    line(format!(
        "{:<16} {:<8} {:>10} {:>8} {:>12}  LAST ERROR",
        "TARGET", "STATE", "FOR", "PENDING", "LAST COPY"
    ));
    for (id, t) in &s.targets {
        let last = t
            .last_export_at
            .as_deref()
            .map(|x| age_of(x, now))
            .unwrap_or_else(|| "-".into());
        let err = t
            .last_error
            .as_ref()
            .map(|e| format!("[{}] {}", e.code, e.message))
            .unwrap_or_default();
        line(format!(
            "{id:<16} {:<8} {:>10} {:>8} {last:>12}  {err}",
            t.state,
            age_of(&t.since, now),
            t.pending
        ));
    }
    if !s.degraded.is_empty() {
        line(String::new());
        line("DEGRADED".into());
        for d in &s.degraded {
            line(format!(
                "  {} {}: {} (for {})",
                d.component,
                d.subject,
                d.reason,
                age_of(&d.since, now)
            ));
        }
    }
    if !s.last_errors.is_empty() {
        line(String::new());
        line("RECENT ERRORS".into());
        for e in s.last_errors.iter().rev().take(8) {
            line(format!(
                "  {} ago [{}] {}: {}",
                age_of(&e.at, now),
                e.code,
                e.path,
                e.message
            ));
        }
    }
    o
}

/// One JSON snapshot.
fn snapshot_json(s: &Status, r: Option<(f64, f64, f64)>) -> serde_json::Value {
    serde_json::json!({
        "at": Timestamp::now().rfc3339().to_string(),
        "agent_id": s.agent_id,
        "running": alive(s),
        "updated_at": s.updated_at,
        "records_per_s": r.map(|r| r.0),
        "copies_per_s": r.map(|r| r.1),
        "bytes_per_s": r.map(|r| r.2),
        "counts": s.counts,
        "backlog": s.backlog,
        "retrying": s.retrying,
        "blocked": s.blocked,
        "oldest_pending_since": s.oldest_pending_since,
        "latency": s.latency,
        "targets": s.targets,
        "degraded": s.degraded,
        "last_errors": s.last_errors,
    })
}

/// Runs the view until q, Ctrl-C or a closed output; the exit code.
pub fn run(config: &Path, interval: Duration, json: bool) -> Result<i32> {
    let cfg = exportd::policy::config::LocalConfig::load_head(config)
        .map(|(c, _)| c)
        .with_context(|| format!("reading the configuration {}", config.display()))?;
    let interval = interval.max(Duration::from_millis(100));
    let tty = std::io::stdout().is_terminal() && !json;
    let quit = Arc::new(AtomicBool::new(false));
    if std::io::stdin().is_terminal() {
        let q = quit.clone();
        std::thread::spawn(move || {
            let mut l = String::new();
            while std::io::stdin().read_line(&mut l).is_ok_and(|n| n > 0) {
                if l.trim().eq_ignore_ascii_case("q") {
                    q.store(true, Ordering::SeqCst);
                    return;
                }
                l.clear();
            }
        });
    }
    let mut prev: Option<Sample> = None;
    let mut out = std::io::stdout().lock();
    while !quit.load(Ordering::SeqCst) {
        let st = Status::read(&cfg.state_dir)
            .with_context(|| format!("reading {}/status.json", cfg.state_dir.display()))?;
        let text = match &st {
            None if json => "{\"status\":null}\n".to_string(),
            None => format!(
                "exportd top: no status yet in {} (the daemon has not run with this state_dir); waiting\n",
                cfg.state_dir.display()
            ),
            Some(s) => {
                let cur = Sample::of(s);
                let r = rates(prev.as_ref(), &cur);
                prev = Some(cur);
                if json {
                    format!("{}\n", snapshot_json(s, r))
                } else {
                    render(s, r, Timestamp::now(), interval)
                }
            }
        };
        let written = (if tty {
            write!(out, "\x1b[H\x1b[2J{text}")
        } else if json {
            write!(out, "{text}")
        } else {
            writeln!(out, "{text}")
        })
        .and_then(|_| out.flush());
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(e).context("writing to stdout");
        }
        let until = Instant::now() + interval;
        while Instant::now() < until && !quit.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exportd::agent::status::{LastError, TargetStatus};

    #[test]
    fn a_screen_shows_rates_targets_and_errors() {
        let now = Timestamp::parse_rfc3339("2026-12-07T11:35:00Z").unwrap();
        let mut s = Status {
            agent_id: "ny".into(),
            updated_at: "2026-12-07T11:34:59.000Z".into(),
            backlog: 6,
            retrying: 6,
            oldest_pending_since: Some("2026-12-07T11:30:00Z".into()),
            ..Status::default()
        };
        s.counts.exported = 40;
        s.targets.insert(
            "nas1".into(),
            TargetStatus {
                state: "failing".into(),
                since: "2026-12-07T11:32:00Z".into(),
                pending: 6,
                last_error: Some(LastError {
                    at: "2026-12-07T11:32:00Z".into(),
                    path: "/s/a.xml".into(),
                    code: "target_unavailable".into(),
                    message: "Read-only file system".into(),
                    record: "a".into(),
                    target: "nas1".into(),
                }),
                ..TargetStatus::default()
            },
        );
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            exported: 10,
            copies: 10,
            bytes: 0,
        };
        let b = Sample {
            at: t0 + Duration::from_secs(2),
            exported: 30,
            copies: 40,
            bytes: 3 << 20,
        };
        let r = rates(Some(&a), &b);
        assert_eq!(r, Some((10.0, 15.0, 1572864.0)));
        let text = render(&s, r, now, Duration::from_secs(2));
        assert!(
            text.contains("throughput  10.0 records/s, 15.0 copies/s, 1.5 MiB/s"),
            "{text}"
        );
        assert!(
            text.contains(
                "backlog     6 (retrying 6, blocked 0, incomplete 0), oldest pending 5 min"
            ),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("nas1 ")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[..5], ["nas1", "failing", "3", "min", "6"], "{text}");
        assert!(
            text.contains("[target_unavailable] Read-only file system"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "plain text has no escape codes");
        assert_eq!(exportd::human::bytes_f(512.0), "512 B");
    }
}
