//! `exportd status [--pending] [--json]`: what the daemon last wrote
//! (status.json, pending.json) and the journal's counts, printed. Reads
//! only; works beside the daemon.

use std::path::Path;

use anyhow::{Context, Result};
use exportd::agent::status::{PendingList, Status};
use exportd::time::Timestamp;

/// `status`: the agent's state, per-target health, what is degraded,
/// counters and the last errors; with `pending`, the records it waits on.
pub fn run(config: &Path, json: bool, pending: bool) -> Result<i32> {
    let cfg = exportd::policy::config::LocalConfig::load_head(config)
        .map(|(c, _)| c)
        .with_context(|| format!("reading the configuration {}", config.display()))?;
    let st = Status::read(&cfg.state_dir)
        .with_context(|| format!("reading {}/status.json", cfg.state_dir.display()))?;
    if pending {
        return show_pending(&cfg.state_dir, &cfg.agent_id, st.as_ref(), json);
    }
    let jpath = cfg.state_dir.join("journal.log");
    let journal = exportd::ledger::journal::Journal::open_read_only(
        exportd::ledger::journal::FileStore::new(jpath.clone()),
    )
    .with_context(|| format!("reading the journal {}", jpath.display()))?;
    let (exp, skip, rej) = journal.counts();
    let agent_key = exportd::proof::key::read_public(&cfg.state_dir)
        .ok()
        .flatten()
        .map(|k| {
            (
                exportd::proof::key::public_b64(&k),
                exportd::proof::key::public_fingerprint(&k),
            )
        });
    if json {
        let v = serde_json::json!({
            "agent_key": agent_key.as_ref().map(|(k, f)| serde_json::json!({"public_key": k, "fingerprint": f})),
            "running": st.as_ref().is_some_and(alive),
            "status": st,
            "journal": {"records": journal.len(), "exported": exp, "skipped": skip, "rejected": rej, "frames": journal.frames()},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match &st {
        None => println!(
            "agent {}: no status yet (the daemon has not run with this state_dir)",
            cfg.agent_id
        ),
        Some(s) => print_status(s),
    }
    println!(
        "journal:        {} records known ({exp} exported, {skip} skipped, {rej} rejected)",
        journal.len()
    );
    if let Some((k, f)) = &agent_key {
        println!("agent key:      {f} ({k})");
    }
    Ok(0)
}

/// Whether the daemon that wrote `s` still runs.
pub fn alive(s: &Status) -> bool {
    s.state == "running" && Path::new(&format!("/proc/{}", s.pid)).exists()
}

/// `2026-12-07T11:30:05.123Z (3 min ago)`.
pub fn when(t: &str) -> String {
    match Timestamp::parse_rfc3339(t) {
        Ok(at) => format!("{t} ({} ago)", ago(Timestamp::now().0 - at.0)),
        Err(_) => t.to_string(),
    }
}

/// A duration in milliseconds, short: `850 ms`, `12 s`, `5 min`, `3 h 5 min`, `2 d 3 h`.
pub fn ago(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..120 => format!("{s} s"),
        120..10800 => format!("{} min", s / 60),
        10800..172800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn print_status(s: &Status) {
    println!(
        "agent:          {} ({})",
        s.agent_id,
        if alive(s) {
            format!("running, pid {}", s.pid)
        } else {
            "not running: what follows is its last status".into()
        }
    );
    println!("updated:        {}", s.updated_at);
    println!("model version:  {}", s.model_version);
    let oldest = s
        .oldest_pending_since
        .as_deref()
        .map(|t| format!(", oldest since {}", when(t)))
        .unwrap_or_default();
    println!(
        "backlog:        {} (retrying {}, blocked {}){oldest}",
        s.backlog, s.retrying, s.blocked
    );
    if let Some(t) = &s.last_export_at {
        println!("last export:    {}", when(t));
    }
    if s.latency.records > 0 {
        let l = &s.latency;
        println!(
            "latency:        p50 {}, p99 {}, max {} (last {} records exported, first seen to written)",
            ago(l.p50_ms as i64),
            ago(l.p99_ms as i64),
            ago(l.max_ms as i64),
            l.records
        );
    }
    if !s.degraded.is_empty() {
        println!("DEGRADED:");
        for d in &s.degraded {
            let what = match d.component.as_str() {
                "central" => "central".to_string(),
                c => format!("{c} {}", d.subject),
            };
            println!("  {what}: {} since {}", d.reason, when(&d.since));
        }
    }
    if !s.targets.is_empty() {
        println!("targets:");
    }
    for (id, t) in &s.targets {
        let last = t
            .last_export_at
            .as_deref()
            .map(|x| format!(", last export {}", when(x)))
            .unwrap_or_default();
        println!(
            "  {id}: {} since {}, {} records pending{last}",
            t.state,
            when(&t.since),
            t.pending
        );
        if let Some(e) = &t.last_error {
            println!("    last error {} [{}] {}", e.at, e.code, e.message);
        }
    }
    println!(
        "since start:    seen {}, exported {}, skipped {}, failed now {}, incomplete {}, {} bytes",
        s.counts.seen,
        s.counts.exported,
        s.counts.skipped,
        s.counts.failed,
        s.counts.incomplete,
        s.counts.bytes
    );
    for (k, v) in &s.exported_by_policy_target {
        println!("  exported {k}: {v}");
    }
    for (k, v) in &s.skipped_by_reason {
        println!("  skipped {k}: {v}");
    }
    for (t, codes) in &s.errors_by_target {
        for (k, v) in codes {
            match t.as_str() {
                "" => println!("  errors {k}: {v}"),
                t => println!("  errors {t} {k}: {v}"),
            }
        }
    }
    if let Some(r) = &s.last_rejection {
        println!("last bundle rejection: {r}");
    }
    if !s.last_errors.is_empty() {
        println!("last errors (of records not exported since):");
        for e in &s.last_errors {
            let rec = if e.record.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.record)
            };
            println!("  {} {}{rec} [{}] {}", e.at, e.path, e.code, e.message);
        }
    }
}

fn show_pending(state_dir: &Path, agent: &str, st: Option<&Status>, json: bool) -> Result<i32> {
    let list = PendingList::read(state_dir)
        .with_context(|| format!("reading {}/pending.json", state_dir.display()))?;
    let running = st.is_some_and(alive);
    if json {
        let v = serde_json::json!({"agent_id": agent, "running": running, "pending": list});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let Some(list) = list else {
        println!("agent {agent}: no pending list yet (the daemon has not run with this state_dir)");
        return Ok(0);
    };
    let note = if running {
        ""
    } else {
        " (the agent is not running: this is the list it left)"
    };
    println!(
        "{} records pending as of {}{note}{}",
        list.total,
        list.updated_at,
        if (list.records.len() as u64) < list.total {
            format!("; the oldest {} shown", list.records.len())
        } else {
            String::new()
        }
    );
    for r in &list.records {
        let on = match r.targets.as_slice() {
            [] => r.waits_on.as_str().to_string(),
            t => format!("{} {}", r.waits_on.as_str(), t.join(",")),
        };
        let id = r.record.as_deref().unwrap_or("-");
        println!("{}  {on:<24} {id}  {}", r.since, r.path);
        if !r.files.is_empty() {
            println!("    files: {}", r.files.join(", "));
        }
        if let Some(u) = &r.until {
            let what = if r.files.is_empty() {
                "next attempt"
            } else {
                "reported incomplete at"
            };
            println!("    {what} {u}");
        }
        if !r.detail.is_empty() {
            println!("    {}", r.detail);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_short() {
        assert_eq!(super::ago(850), "850 ms");
        assert_eq!(super::ago(12_000), "12 s");
        assert_eq!(super::ago(300_000), "5 min");
        assert_eq!(super::ago(3 * 3_600_000 + 300_000), "3 h 5 min");
        assert_eq!(super::ago(2 * 86_400_000 + 3_600_000 * 3), "2 d 3 h");
    }
}
