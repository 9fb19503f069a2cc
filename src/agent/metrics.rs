//! node_exporter textfile-collector metrics (`metrics_file`, by default
//! `<state_dir>/metrics/exportd.prom`), replaced atomically whenever the
//! status changes. No listening port. Times are published as unix
//! timestamps (never as ages frozen at the last write), so an alert
//! computes the age with `time() - ...`.

use std::fmt::Write;
use std::path::Path;

use crate::agent::status::Status;
use crate::time::Timestamp;

/// Extra gauges not kept in [`Status`].
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Whether the last configuration apply succeeded (None: nothing applied yet).
    pub last_apply_ok: Option<bool>,
    /// When it happened (unix seconds).
    pub last_apply_at: Option<f64>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unix seconds of an RFC 3339 time in the status file.
fn unix(t: &str) -> Option<f64> {
    Timestamp::parse_rfc3339(t)
        .ok()
        .map(|t| t.0 as f64 / 1000.0)
}

/// One metric family: help, type, rows (`{labels}`, value).
struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>) {
        if rows.is_empty() {
            return;
        }
        let s = &mut self.0;
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: Option<f64>) {
        self.metric(
            name,
            kind,
            help,
            v.map(|v| (String::new(), v)).into_iter().collect(),
        );
    }
}

/// `{policy="..",target=".."}` rows of a `policy/target` map.
fn by_policy_target(m: &std::collections::BTreeMap<String, u64>) -> Vec<(String, f64)> {
    m.iter()
        .map(|(k, v)| {
            let (p, t) = k.split_once('/').unwrap_or((k, ""));
            (
                format!("{{policy=\"{}\",target=\"{}\"}}", esc(p), esc(t)),
                *v as f64,
            )
        })
        .collect()
}

/// Renders the metrics text (Prometheus exposition format).
pub fn render(st: &Status, g: &Gauges) -> String {
    let mut o = Out(String::new());
    counters(&mut o, st);
    let c = &st.counts;
    o.one("exportd_failed_records", "gauge", "Records failed now (rejected, refused, missing key, reported incomplete) and not exported since.", Some(c.failed as f64));
    o.one(
        "exportd_incomplete_records",
        "gauge",
        "Records waiting for listed files.",
        Some(c.incomplete as f64),
    );
    o.one(
        "exportd_backlog_records",
        "gauge",
        "Records queued, in flight, waiting for files or a retry.",
        Some(st.backlog as f64),
    );
    o.one(
        "exportd_retrying_records",
        "gauge",
        "Records waiting for a retry after a transient failure.",
        Some(st.retrying as f64),
    );
    o.one(
        "exportd_blocked_records",
        "gauge",
        "Records waiting for a configuration change or a key.",
        Some(st.blocked as f64),
    );
    o.one("exportd_oldest_pending_first_seen_timestamp_seconds", "gauge", "When the oldest record not yet finished was first seen (absent when none is pending): alert on time() minus this.", st.oldest_pending_since.as_deref().and_then(unix));
    o.one(
        "exportd_last_export_timestamp_seconds",
        "gauge",
        "When the last copy was written (absent before the first).",
        st.last_export_at.as_deref().and_then(unix),
    );
    o.one(
        "exportd_status_updated_timestamp_seconds",
        "gauge",
        "When this file was written.",
        unix(&st.updated_at),
    );
    targets(&mut o, st);
    o.metric(
        "exportd_degraded",
        "gauge",
        "1 for each part that does not work as configured (component central, spool or target).",
        st.degraded
            .iter()
            .map(|d| {
                (
                    format!(
                        "{{component=\"{}\",subject=\"{}\"}}",
                        esc(&d.component),
                        esc(&d.subject)
                    ),
                    1.0,
                )
            })
            .collect(),
    );
    let l = &st.latency;
    if l.records > 0 {
        o.metric(
            "exportd_export_latency_seconds",
            "gauge",
            "First seen to every copy written, over the latest 512 records exported (quantile 1 = max).",
            vec![
                ("{quantile=\"0.5\"}".into(), l.p50_ms as f64 / 1000.0),
                ("{quantile=\"0.99\"}".into(), l.p99_ms as f64 / 1000.0),
                ("{quantile=\"1\"}".into(), l.max_ms as f64 / 1000.0),
            ],
        );
    }
    o.one(
        "exportd_config_version",
        "gauge",
        "Version of the policy model in force (0 = inline).",
        Some(st.model_version as f64),
    );
    o.one(
        "exportd_last_apply_success",
        "gauge",
        "Whether the last configuration bundle was applied (1) or rejected (0).",
        g.last_apply_ok.map(|ok| if ok { 1.0 } else { 0.0 }),
    );
    o.one(
        "exportd_last_apply_timestamp_seconds",
        "gauge",
        "When the last configuration bundle was applied or rejected.",
        g.last_apply_at,
    );
    o.0
}

/// The counters since the agent started.
fn counters(o: &mut Out, st: &Status) {
    let c = &st.counts;
    o.metric(
        "exportd_records_total",
        "counter",
        "Records finished since the agent started, by outcome (a record that failed and was exported later counts as exported).",
        vec![
            ("{outcome=\"seen\"}".into(), c.seen as f64),
            ("{outcome=\"exported\"}".into(), c.exported as f64),
            ("{outcome=\"skipped\"}".into(), c.skipped as f64),
        ],
    );
    o.metric(
        "exportd_copies_exported_total",
        "counter",
        "Record copies written, by policy and target.",
        by_policy_target(&st.exported_by_policy_target),
    );
    o.metric(
        "exportd_bytes_exported_total",
        "counter",
        "Bytes written, by policy and target.",
        by_policy_target(&st.bytes_by_policy_target),
    );
    o.metric(
        "exportd_skipped_total",
        "counter",
        "Skip rows, by reason.",
        st.skipped_by_reason
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{}\"}}", esc(k)), *v as f64))
            .collect(),
    );
    let mut errors = Vec::new();
    for (t, codes) in &st.errors_by_target {
        for (k, v) in codes {
            errors.push((
                format!("{{target=\"{}\",code=\"{}\"}}", esc(t), esc(k)),
                *v as f64,
            ));
        }
    }
    o.metric(
        "exportd_errors_total",
        "counter",
        "Error rows, by target (empty: the record itself) and code.",
        errors,
    );
}

/// Per-target health.
fn targets(o: &mut Out, st: &Status) {
    let rows =
        |f: &dyn Fn(&crate::agent::status::TargetStatus) -> Option<f64>| -> Vec<(String, f64)> {
            st.targets
                .iter()
                .filter_map(|(id, t)| f(t).map(|v| (format!("{{target=\"{}\"}}", esc(id)), v)))
                .collect()
        };
    o.metric("exportd_target_up", "gauge", "1 when the target's last copy worked (or it was not used yet), 0 while it fails or refuses.", rows(&|t| Some(if t.state == "ok" { 1.0 } else { 0.0 })));
    o.metric(
        "exportd_target_state_since_timestamp_seconds",
        "gauge",
        "Since when the target is in its state (up or not).",
        rows(&|t| unix(&t.since)),
    );
    o.metric(
        "exportd_target_pending_records",
        "gauge",
        "Records waiting for a copy to the target (retried or blocked).",
        rows(&|t| Some(t.pending as f64)),
    );
    o.metric(
        "exportd_target_last_export_timestamp_seconds",
        "gauge",
        "When the last copy to the target was written.",
        rows(&|t| t.last_export_at.as_deref().and_then(unix)),
    );
}

/// Writes the metrics file atomically (its folder is made if missing).
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::policy::snapshot::write_atomic(path, text.as_bytes())
}

/// The metrics file of a state folder when `metrics_file` is not set.
pub fn default_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("metrics").join("exportd.prom")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::{Degraded, TargetStatus};

    #[test]
    fn exposition_format() {
        let mut st = Status::default();
        st.counts.exported = 3;
        st.counts.failed = 1;
        st.exported_by_policy_target
            .insert("p-voice/nas\"1".into(), 3);
        st.model_version = 42;
        st.updated_at = "2026-12-07T11:00:01.500Z".into();
        st.oldest_pending_since = Some("2026-12-07T10:59:00.000Z".into());
        st.errors_by_target
            .entry("nas1".into())
            .or_default()
            .insert("target_unavailable".into(), 4);
        st.errors_by_target
            .entry(String::new())
            .or_default()
            .insert("bad_metadata".into(), 1);
        st.targets.insert(
            "nas1".into(),
            TargetStatus {
                state: "failing".into(),
                since: "2026-12-07T10:58:00.000Z".into(),
                pending: 6,
                ..TargetStatus::default()
            },
        );
        st.degraded.push(Degraded {
            component: "target".into(),
            subject: "nas1".into(),
            since: "2026-12-07T10:58:00.000Z".into(),
            reason: "failing".into(),
        });
        let t = render(
            &st,
            &Gauges {
                last_apply_ok: Some(false),
                last_apply_at: Some(10.0),
            },
        );
        for want in [
            "exportd_records_total{outcome=\"exported\"} 3\n",
            "exportd_copies_exported_total{policy=\"p-voice\",target=\"nas\\\"1\"} 3\n",
            "exportd_failed_records 1\n",
            "exportd_config_version 42\n",
            "exportd_oldest_pending_first_seen_timestamp_seconds 1796641140\n",
            "exportd_status_updated_timestamp_seconds 1796641201.5\n",
            "exportd_errors_total{target=\"nas1\",code=\"target_unavailable\"} 4\n",
            "exportd_errors_total{target=\"\",code=\"bad_metadata\"} 1\n",
            "exportd_target_up{target=\"nas1\"} 0\n",
            "exportd_target_pending_records{target=\"nas1\"} 6\n",
            "exportd_target_state_since_timestamp_seconds{target=\"nas1\"} 1796641080\n",
            "exportd_degraded{component=\"target\",subject=\"nas1\"} 1\n",
            "exportd_last_apply_success 0\n",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        assert!(
            !t.contains("exportd_last_export_timestamp_seconds"),
            "none yet: absent"
        );
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap();
        }
    }
}
