//! node_exporter textfile-collector metrics (`<state_dir>/metrics/exportd.prom`),
//! replaced atomically whenever the status changes. No listening port.

use std::fmt::Write;
use std::path::Path;

use crate::status::Status;

/// Extra gauges not kept in [`Status`].
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Age of the oldest record not yet finished, seconds.
    pub oldest_pending_age_s: f64,
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

/// Renders the metrics text (Prometheus exposition format).
pub fn render(st: &Status, g: &Gauges) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    };
    let c = &st.counts;
    metric(
        "exportd_records_total",
        "counter",
        "Records processed since the agent started, by outcome.",
        vec![
            ("{outcome=\"seen\"}".into(), c.seen as f64),
            ("{outcome=\"exported\"}".into(), c.exported as f64),
            ("{outcome=\"skipped\"}".into(), c.skipped as f64),
            ("{outcome=\"failed\"}".into(), c.failed as f64),
        ],
    );
    let pt = |m: &std::collections::BTreeMap<String, u64>| -> Vec<(String, f64)> {
        m.iter()
            .map(|(k, v)| {
                let (p, t) = k.split_once('/').unwrap_or((k, ""));
                (
                    format!("{{policy=\"{}\",target=\"{}\"}}", esc(p), esc(t)),
                    *v as f64,
                )
            })
            .collect()
    };
    metric(
        "exportd_copies_exported_total",
        "counter",
        "Record copies written, by policy and target.",
        pt(&st.exported_by_policy_target),
    );
    metric(
        "exportd_bytes_exported_total",
        "counter",
        "Bytes written, by policy and target.",
        pt(&st.bytes_by_policy_target),
    );
    metric(
        "exportd_skipped_total",
        "counter",
        "Skip rows, by reason.",
        st.skipped_by_reason
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{}\"}}", esc(k)), *v as f64))
            .collect(),
    );
    metric(
        "exportd_errors_total",
        "counter",
        "Error rows, by code.",
        st.errors_by_code
            .iter()
            .map(|(k, v)| (format!("{{code=\"{}\"}}", esc(k)), *v as f64))
            .collect(),
    );
    metric(
        "exportd_incomplete_records",
        "gauge",
        "Records waiting for listed files.",
        vec![(String::new(), c.incomplete as f64)],
    );
    metric(
        "exportd_backlog_records",
        "gauge",
        "Records queued, in flight, waiting for files or a retry.",
        vec![(String::new(), st.backlog as f64)],
    );
    metric(
        "exportd_blocked_records",
        "gauge",
        "Records waiting for a configuration change or a key.",
        vec![(String::new(), st.blocked as f64)],
    );
    metric(
        "exportd_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest record not yet finished.",
        vec![(String::new(), g.oldest_pending_age_s)],
    );
    metric(
        "exportd_config_version",
        "gauge",
        "Version of the policy model in force (0 = inline).",
        vec![(String::new(), st.model_version as f64)],
    );
    if let Some(ok) = g.last_apply_ok {
        metric(
            "exportd_last_apply_success",
            "gauge",
            "Whether the last configuration bundle was applied (1) or rejected (0).",
            vec![(String::new(), if ok { 1.0 } else { 0.0 })],
        );
    }
    if let Some(t) = g.last_apply_at {
        metric(
            "exportd_last_apply_timestamp_seconds",
            "gauge",
            "When the last configuration bundle was applied or rejected.",
            vec![(String::new(), t)],
        );
    }
    s
}

/// Writes the metrics file atomically.
pub fn write(state_dir: &Path, text: &str) -> std::io::Result<()> {
    let dir = state_dir.join("metrics");
    std::fs::create_dir_all(&dir)?;
    crate::snapshot::write_atomic(&dir.join("exportd.prom"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut st = Status::default();
        st.counts.exported = 3;
        st.exported_by_policy_target
            .insert("p-voice/nas\"1".into(), 3);
        st.model_version = 42;
        let t = render(
            &st,
            &Gauges {
                oldest_pending_age_s: 1.5,
                last_apply_ok: Some(false),
                last_apply_at: Some(10.0),
            },
        );
        assert!(
            t.contains("exportd_records_total{outcome=\"exported\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("exportd_copies_exported_total{policy=\"p-voice\",target=\"nas\\\"1\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("exportd_config_version 42\n"));
        assert!(t.contains("exportd_oldest_pending_age_seconds 1.5\n"));
        assert!(t.contains("exportd_last_apply_success 0\n"));
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap();
        }
    }
}
