//! The checkpoint thread of the daemon: runs a [`Checkpointer`] beside the
//! record exports, so a slow or unavailable target never holds them up.
//! Never touches the audit log's appends, the journal or a record folder.
//!
//! It makes a checkpoint (when rows were appended since the last one) at
//! start, every `interval`, just after each UTC midnight and at stop, and
//! retries unpublished copies with a backoff (30 s doubling to 10 min).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ProofError;
use super::key::{self, AgentKey};
use super::publish::Checkpointer;
use crate::sink::Target;
use crate::time::Timestamp;

/// The default of `checkpoint_interval_s`.
pub const DEFAULT_INTERVAL_S: u64 = 900;

enum Msg {
    Targets(Vec<Arc<dyn Target>>),
    Stop(mpsc::Sender<()>),
}

/// The running checkpoint thread.
pub struct Service {
    tx: mpsc::Sender<Msg>,
    handle: Option<JoinHandle<()>>,
    public_b64: String,
    fingerprint: String,
}

impl Service {
    /// Loads (or makes, at first start) the agent key, opens the local
    /// checkpoint state and starts the thread; its first checkpoint and
    /// publication run at once.
    pub fn start(
        state_dir: &Path,
        agent_id: &str,
        interval: Duration,
        targets: Vec<Arc<dyn Target>>,
    ) -> Result<Service, ProofError> {
        let key = key::load_or_create(state_dir)?;
        Self::start_with(state_dir, agent_id, key, interval, targets)
    }

    /// [`Service::start`] with a given key.
    pub fn start_with(
        state_dir: &Path,
        agent_id: &str,
        key: AgentKey,
        interval: Duration,
        targets: Vec<Arc<dyn Target>>,
    ) -> Result<Service, ProofError> {
        let public_b64 = key.public_b64();
        let fingerprint = key.fingerprint();
        let cp = Checkpointer::open(state_dir, agent_id, key)?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("exportd-proof".into())
            .spawn(move || run(cp, rx, interval.max(Duration::from_secs(1)), targets))
            .map_err(|e| {
                ProofError::Checkpoint(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Service {
            tx,
            handle: Some(handle),
            public_b64,
            fingerprint,
        })
    }

    /// Base64 of the agent's public key.
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The agent key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The targets in force changed (reload, accepted bundle).
    pub fn set_targets(&self, targets: Vec<Arc<dyn Target>>) {
        let _ = self.tx.send(Msg::Targets(targets));
    }

    /// Makes the stop checkpoint and tries once more to publish, waiting at
    /// most `wait` for it (what is not published is put after the next start).
    pub fn stop(mut self, wait: Duration) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(Msg::Stop(ack_tx)).is_ok() && ack_rx.recv_timeout(wait).is_ok() {
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        } else {
            tracing::warn!(
                "audit checkpoints: the stop checkpoint or its publication did not finish within {wait:?}; the rest is done at the next start"
            );
        }
    }
}

/// Time until just after the next UTC midnight.
fn until_day_close(now: Timestamp) -> Duration {
    const DAY: i64 = 86_400_000;
    let next = (now.0.div_euclid(DAY) + 1) * DAY + 1_000;
    Duration::from_millis((next - now.0).max(1_000) as u64)
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs((30u64 << failures.min(5)).min(600))
}

fn run(
    mut cp: Checkpointer,
    rx: mpsc::Receiver<Msg>,
    interval: Duration,
    mut targets: Vec<Arc<dyn Target>>,
) {
    let mut next_cp = Instant::now();
    let mut next_publish: Option<Instant> = Some(Instant::now());
    let mut failures = 0u32;
    let mut day = Timestamp::now().day_number();
    loop {
        let now = Instant::now();
        let mut wake = next_cp.min(now + until_day_close(Timestamp::now()));
        if let Some(p) = next_publish {
            wake = wake.min(p);
        }
        let mut stop = None;
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Msg::Targets(t)) => {
                targets = t;
                next_publish = Some(Instant::now());
            }
            Ok(Msg::Stop(ack)) => stop = Some(Some(ack)),
            Err(RecvTimeoutError::Disconnected) => stop = Some(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let today = Timestamp::now().day_number();
        if stop.is_some() || now >= next_cp || today != day {
            day = today;
            next_cp = now + interval;
            match cp.checkpoint(Timestamp::now()) {
                Ok(0) => {}
                Ok(_) => next_publish = Some(now),
                Err(e) => {
                    tracing::error!("audit checkpoint: {e}; retried in a minute");
                    next_cp = now + interval.min(Duration::from_secs(60));
                }
            }
        }
        if stop.is_some() || next_publish.is_some_and(|p| now >= p) {
            if cp.publish(&targets, stop.is_some()) {
                failures = 0;
                next_publish = None;
            } else {
                next_publish = Some(now + backoff(failures));
                failures += 1;
            }
        }
        if let Some(ack) = stop {
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
            return;
        }
    }
}

/// The daemon's handle on the checkpoint thread: started with the daemon,
/// told when the targets in force change, stopped last. A thread that
/// cannot start (e.g. an agent key others may read) is logged and the
/// daemon runs on without checkpoints; records are still exported.
pub struct Hook {
    svc: Option<Service>,
    given: Arc<Vec<Arc<dyn Target>>>,
}

impl Hook {
    /// Starts the thread for `cfg` (`checkpoint_interval_s`, default 900).
    pub fn start(
        cfg: &crate::policy::config::LocalConfig,
        targets: &Arc<Vec<Arc<dyn Target>>>,
    ) -> Hook {
        let interval = Duration::from_secs(cfg.checkpoint_interval_s.unwrap_or(DEFAULT_INTERVAL_S));
        let svc = match Service::start(&cfg.state_dir, &cfg.agent_id, interval, targets.to_vec()) {
            Ok(s) => {
                tracing::info!(
                    fingerprint = s.fingerprint(),
                    "agent key {}; audit checkpoints at most {} s after rows are appended",
                    s.public_key(),
                    interval.as_secs()
                );
                Some(s)
            }
            Err(e) => {
                tracing::error!("audit checkpoints are disabled: {e}");
                None
            }
        };
        Hook {
            svc,
            given: targets.clone(),
        }
    }

    /// Passes the targets in force on when they changed (a reload, a bundle).
    pub fn targets(&mut self, targets: &Arc<Vec<Arc<dyn Target>>>) {
        if Arc::ptr_eq(&self.given, targets) {
            return;
        }
        self.given = targets.clone();
        if let Some(s) = &self.svc {
            s.set_targets(targets.to_vec());
        }
    }

    /// The stop checkpoint and a last publication (at most 30 s).
    pub fn stop(&mut self) {
        if let Some(s) = self.svc.take() {
            s.stop(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_close_is_just_after_midnight() {
        let t = Timestamp(86_400_000 * 20_000 + 86_399_000);
        assert_eq!(until_day_close(t), Duration::from_millis(2_000));
        let t = Timestamp(86_400_000 * 20_000);
        assert_eq!(until_day_close(t), Duration::from_millis(86_401_000));
        assert_eq!(backoff(0), Duration::from_secs(30));
        assert_eq!(backoff(9), Duration::from_secs(600));
    }
}
