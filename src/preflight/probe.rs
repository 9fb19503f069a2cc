//! `exportd check-config --probe`: every target written to and cleaned up
//! through its own code path, and central reached, one line each. Writes
//! only probe files (a temp in a folder target's `.exportd-tmp`, a key
//! under an S3 target's `<prefix>exportd-probe/`), never a record.

use std::fmt;
use std::time::Duration;

use crate::control::bundle::central::{CentralClient, CentralOptions};
use crate::policy::config::LocalConfig;
use crate::policy::model::{TargetKind, TargetSpec};
use crate::sink::fs::FsTarget;
use crate::sink::s3::{RetryPolicy, S3Options, S3Target};

/// What probing one target (or central) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLine {
    /// `target nas1 (fs)`, `central https://...`.
    pub what: String,
    /// What was done, or why it failed.
    pub result: Result<String, String>,
}

impl ProbeLine {
    /// Whether the probe succeeded.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for ProbeLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(s) => write!(f, "probe {}: ok: {s}", self.what),
            Err(s) => write!(f, "probe {}: FAILED: {s}", self.what),
        }
    }
}

/// S3 tunables for a probe: a failure is reported soon, not after the
/// daemon's 30 s of retries.
fn probe_options() -> S3Options {
    S3Options {
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(1),
            max_total: Duration::from_secs(10),
        },
        connect_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(20),
        ..S3Options::default()
    }
}

/// Probes every target of `targets` (a folder: a temp file written,
/// fsynced and removed; S3: Object Lock checked when asked for, an object
/// written, read back and deleted) and central when configured (one bundle
/// poll over its mutual TLS, waiting at most `central_wait` for an answer).
pub fn probe(cfg: &LocalConfig, targets: &[TargetSpec], central_wait: Duration) -> Vec<ProbeLine> {
    let mut out = Vec::new();
    for t in targets {
        let result = match t.kind {
            TargetKind::Fs => FsTarget::new(t, &crate::agent::setup::target_env(cfg))
                .probe()
                .map_err(|e| e.to_string()),
            TargetKind::S3 => S3Target::with_options(t, probe_options())
                .map_err(|e| e.to_string())
                .and_then(|s| s.probe(&cfg.agent_id).map_err(|e| e.to_string())),
        };
        out.push(ProbeLine {
            what: format!("target {} ({})", t.id, t.kind.as_str()),
            result,
        });
    }
    if let Some(c) = &cfg.central {
        out.push(ProbeLine {
            what: format!("central {}", c.url),
            result: central(cfg, central_wait),
        });
    }
    out
}

/// One bundle poll at central with the version in force.
fn central(cfg: &LocalConfig, wait: Duration) -> Result<String, String> {
    let Some(c) = &cfg.central else {
        return Err("not configured".into());
    };
    let opts = CentralOptions {
        connect_timeout: Duration::from_secs(10),
        ..CentralOptions::default()
    };
    let client = CentralClient::with_options(&super::central_config(c), &cfg.agent_id, opts)
        .map_err(|e| e.to_string())?;
    let version = crate::control::bundle::BundleState::load(&cfg.state_dir)
        .map(|s| s.version())
        .unwrap_or(0);
    match client.probe(version, wait) {
        Ok(Some(200)) => Ok(format!(
            "reached over mutual TLS; central has a bundle newer than version {version} for this agent"
        )),
        Ok(Some(s)) => Ok(format!(
            "reached over mutual TLS (HTTP {s}: nothing newer than version {version})"
        )),
        Ok(None) => Ok(format!(
            "reached over mutual TLS; central held the poll open for {} s (long poll)",
            wait.as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}
