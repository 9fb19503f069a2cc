//! The central poller thread: long-polls for bundles, sends the heartbeat.
//! Never swaps a model in itself.
//!
//! A thread that long-polls the central manager for
//! bundles newer than the one in force (checking, preparing and committing
//! them under the bundle state's lock), and sends the status heartbeat. It
//! hands what it got to the agent's loop; it never swaps a model in itself.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, warn};

use crate::agent::setup::{PreparedModel, prepare_bundle, target_env};
use crate::agent::status::Status;
use crate::control::bundle::central::{
    Backoff, CentralClient, CentralConfig, CentralError, FetchOutcome, Rejection, RequestProgress,
    StatusReport,
};
use crate::control::bundle::{Accepted, BundleState};
use crate::policy::config::LocalConfig;
use crate::policy::model::Admin;
use crate::sink::fs::TargetEnv;
use crate::time::Timestamp;

/// What the poller hands to the agent's loop.
#[derive(Debug)]
pub enum FromCentral {
    /// The end of a poll (nothing new, or a rejection).
    Outcome(FetchOutcome),
    /// A bundle from central, checked, prepared and committed.
    Applied(Accepted, Option<PreparedModel>),
}

/// Why the configured `[central]` cannot run (its client cannot be set up:
/// a CA, certificate or key file missing or unreadable), if so. `None`
/// without `[central]`.
pub fn problem(cfg: &LocalConfig) -> Option<String> {
    let central = cfg.central.as_ref()?;
    let cc = CentralConfig {
        url: central.url.clone(),
        ca: central.ca.clone(),
        client_cert: central.client_cert.clone(),
        client_key: central.client_key.clone(),
    };
    CentralClient::new(&cc, &cfg.agent_id)
        .err()
        .map(|e| e.to_string())
}

/// Starts the poller thread when `[central]` is configured; returns the
/// sender that wakes it to report the status at once.
pub fn start<M: Send + 'static>(
    cfg: &LocalConfig,
    bundle: Arc<Mutex<BundleState>>,
    shared: Arc<Mutex<Status>>,
    tx: UnboundedSender<M>,
    wrap: fn(FromCentral) -> M,
) -> Option<Sender<()>> {
    let central = cfg.central.clone()?;
    let cc = CentralConfig {
        url: central.url.clone(),
        ca: central.ca.clone(),
        client_cert: central.client_cert.clone(),
        client_key: central.client_key.clone(),
    };
    let client = match CentralClient::new(&cc, &cfg.agent_id) {
        Ok(c) => c,
        Err(e) => {
            error!("central is disabled: {e}");
            return None;
        }
    };
    let (kick_tx, kick_rx) = std::sync::mpsc::channel::<()>();
    let heartbeat = Duration::from_secs(central.heartbeat_s.max(1));
    let mut poller = Poller {
        client,
        kick_rx,
        anchors: cfg.trust.clone(),
        spool: cfg.spool.clone(),
        max_bytes: cfg.max_bundle_bytes(),
        env: target_env(cfg),
        tx,
        wrap,
        shared,
        bundle,
        state_dir: cfg.state_dir.clone(),
        agent_id: cfg.agent_id.clone(),
        heartbeat,
        poll_interval: Duration::from_secs(central.poll_interval_s.max(1)),
        backoff: Backoff::new(),
        last_report: Instant::now() - heartbeat,
    };
    std::thread::Builder::new()
        .name("central".into())
        .spawn(move || poller.run())
        .ok();
    Some(kick_tx)
}

struct Poller<M> {
    client: CentralClient,
    kick_rx: Receiver<()>,
    anchors: Vec<Admin>,
    spool: Vec<PathBuf>,
    /// `max_bundle_bytes`.
    max_bytes: u64,
    env: TargetEnv,
    tx: UnboundedSender<M>,
    wrap: fn(FromCentral) -> M,
    shared: Arc<Mutex<Status>>,
    bundle: Arc<Mutex<BundleState>>,
    state_dir: PathBuf,
    agent_id: String,
    heartbeat: Duration,
    poll_interval: Duration,
    backoff: Backoff,
    last_report: Instant,
}

impl<M> Poller<M> {
    /// Report when due, poll, hand over what came; until the agent stops.
    fn run(&mut self) {
        loop {
            let report_due =
                self.last_report.elapsed() >= self.heartbeat || self.kick_rx.try_recv().is_ok();
            if report_due {
                self.report();
            }
            let poll_started = Instant::now();
            let (res, applied) = self.poll();
            if let Some((a, prepared)) = applied {
                self.backoff.reset();
                if !self.send(FromCentral::Applied(a, prepared)) {
                    return;
                }
                continue;
            }
            let go_on = match res {
                Ok(FetchOutcome::NothingNew) => {
                    self.backoff.reset();
                    // Central answered without holding the request: do
                    // not hammer it; wait (a status report may wake us).
                    self.wait_until(poll_started + self.poll_interval)
                }
                Ok(out) => {
                    self.backoff.reset();
                    let rejected = matches!(out, FetchOutcome::Rejected(_));
                    // Central keeps offering a bundle we refuse: do not
                    // fetch it again in a loop.
                    self.send(FromCentral::Outcome(out))
                        && (!rejected || self.wait_until(poll_started + self.poll_interval))
                }
                Err(e) => self.back_off(e),
            };
            if !go_on || self.tx.is_closed() {
                return;
            }
        }
    }

    fn send(&self, m: FromCentral) -> bool {
        self.tx.send((self.wrap)(m)).is_ok()
    }

    /// Sends the status report to central.
    fn report(&mut self) {
        let rep = status_report(&self.agent_id, &self.state_dir, &self.shared, &self.bundle);
        // The checkpoint key rides along (issue #14), so central can record it.
        let key = crate::proof::key::read_public(&self.state_dir)
            .ok()
            .flatten()
            .map(|k| {
                (
                    crate::proof::key::public_b64(&k),
                    crate::proof::key::public_fingerprint(&k),
                )
            });
        let key = key.as_ref().map(|(k, f)| (k.as_str(), f.as_str()));
        match self.client.post_status_with(&rep, key) {
            Ok(()) => self.last_report = Instant::now(),
            Err(e) => warn!("status report to central failed: {e}"),
        }
    }

    /// One long poll. A bundle that came is checked, prepared and
    /// committed under the state lock (a model that cannot be put in force
    /// is rejected, never committed); it is returned apart.
    #[allow(clippy::type_complexity)]
    fn poll(
        &mut self,
    ) -> (
        Result<FetchOutcome, CentralError>,
        Option<(Accepted, Option<PreparedModel>)>,
    ) {
        let after = self
            .bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .version();
        // Long-poll without holding the state lock; apply under it.
        // Streamed to a spool file in state_dir/bundle, never held in memory.
        match self
            .client
            .fetch_spooled(after, self.max_bytes, &self.state_dir.join("bundle"))
        {
            Ok(None) => (Ok(FetchOutcome::NothingNew), None),
            Ok(Some(Err(e))) => (Ok(FetchOutcome::Rejected(e)), None),
            Ok(Some(Ok(sp))) => {
                let mut st = self.bundle.lock().unwrap_or_else(|p| p.into_inner());
                match crate::control::bundle::streamed::apply_spooled_with(
                    sp,
                    &self.anchors,
                    &mut st,
                    &self.state_dir,
                    &mut prepare_bundle(&self.spool, &self.env),
                ) {
                    Ok(applied) => (Ok(FetchOutcome::NothingNew), Some(applied)),
                    Err(e) => (Ok(FetchOutcome::Rejected(e)), None),
                }
            }
            Err(e) => (Err(e), None),
        }
    }

    /// Central unreachable: wait with backoff, but wake early to send a
    /// status report when asked. False when the agent is shutting down.
    fn back_off(&mut self, e: CentralError) -> bool {
        let d = self.backoff.next_delay();
        warn!(
            "central unreachable ({e}); retrying in {:.0}s",
            d.as_secs_f64()
        );
        match self.kick_rx.recv_timeout(d) {
            Ok(()) => self.last_report = Instant::now() - self.heartbeat,
            Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) => {}
        }
        true
    }

    /// Sleeps until `deadline`; a kick from the main loop sends a status
    /// report at once without cutting the wait short. Returns false when
    /// the agent is shutting down (its end of the kick channel is gone):
    /// the thread then stops at once.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            match self.kick_rx.recv_timeout(deadline - now) {
                Ok(()) => self.report(),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// The heartbeat sent to central: the status as last flushed, the version
/// in force, and every request's progress.
fn status_report(
    agent_id: &str,
    state_dir: &Path,
    shared: &Mutex<Status>,
    bundle: &Mutex<BundleState>,
) -> StatusReport {
    let st = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let version = bundle.lock().unwrap_or_else(|p| p.into_inner()).version();
    let mut counts = std::collections::BTreeMap::new();
    counts.insert("seen".to_string(), st.counts.seen);
    counts.insert("exported".to_string(), st.counts.exported);
    counts.insert("skipped".to_string(), st.counts.skipped);
    counts.insert("failed".to_string(), st.counts.failed);
    counts.insert("incomplete".to_string(), st.counts.incomplete);
    counts.insert("bytes".to_string(), st.counts.bytes);
    let requests = crate::requests::compliance::StatusStore::new(state_dir)
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|r| RequestProgress {
            request_id: r.request_id,
            status: format!("{:?}", r.status),
            percent: r.percent,
        })
        .collect();
    StatusReport {
        agent_id: agent_id.to_string(),
        version_in_force: version,
        last_rejection: st.last_rejection.map(|r| {
            let (at, reason) = r.split_once(' ').unwrap_or(("", &r));
            Rejection {
                reason: reason.to_string(),
                at: at.to_string(),
            }
        }),
        backlog: st.backlog,
        counts,
        requests,
        sent_at: Timestamp::now().rfc3339().to_string(),
    }
}
