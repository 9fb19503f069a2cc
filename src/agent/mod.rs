//! The daemon's loop: waits for the rooms' events and routes them. Owns no
//! room's state and decides nothing a room decides.
//!
//! It runs on a single-threaded tokio runtime and sleeps in `epoll` when
//! nothing happens.
//!
//! The rooms: `watch` ([`crate::watch::watcher`]: inotify, rescans, files
//! still being written), `schedule` (queue, workers, retries, grace),
//! `control` ([`crate::control::room`]: SIGHUP reload, inbox, central,
//! model swap), `requests` ([`crate::requests::room`]: compliance
//! requests), `status` ([`report`]: status file, metrics, sd_notify). The
//! only timers are pending grace periods, retry backoffs, a status flush
//! after a change, and systemd's watchdog when systemd asks for one.

pub mod health;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod schedule;
pub mod setup;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::agent::report::Reporter;
use crate::agent::schedule::Schedule;
use crate::agent::status::{Counts, Status};
use crate::control::poller::FromCentral;
use crate::control::room::{Control, ControlOut};
use crate::export::{self, Ctx, Options, Outcome, Report};
use crate::ledger::audit::AuditError;
use crate::ledger::journal::PathKey;
use crate::policy::config::{ConfigError, LocalConfig};
use crate::policy::snapshot::SnapshotError;
use crate::requests::room::{self, Requests};
use crate::watch::watcher::{WatchOut, WatchSetup, Watcher};

pub use schedule::backoff;
pub use setup::{
    PreparedModel, build_targets, build_targets_from, install_snapshot, make_ctx, model_in_force,
    prepare_compiled, prepare_model, snapshot_in_force, snapshot_to_read, spool_overlap_problems,
    target_env,
};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Process what is present, wait for in-flight work, then exit.
    pub until_idle: bool,
    /// With `until_idle`: do not consider the agent idle while this is set
    /// (the demo holds it while its simulator is still writing).
    pub hold: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The end of a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Counters.
    pub counts: Counts,
    /// Records that failed, with the reason (for `--until-idle`).
    pub failures: Vec<String>,
    /// The final status.
    pub status: Status,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// State directory problem.
    #[error("state_dir {path}: {source}")]
    State {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state directory is locked by another exportd, or cannot be locked.
    #[error(transparent)]
    Locked(#[from] crate::ledger::state_lock::LockError),
    /// Audit log problem.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Snapshot problem.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A target could not be set up.
    #[error("target {id}: {msg}")]
    Target {
        /// Target id.
        id: String,
        /// What is wrong.
        msg: String,
    },
    /// inotify or runtime setup failed.
    #[error("{0}")]
    Runtime(String),
    /// A folder target of the model in force overlaps a spool root.
    #[error(
        "the model in force (version {version}) is refused: {problems}; the spool is never written: fix the target's path"
    )]
    SpoolOverlap {
        /// The model's version.
        version: u64,
        /// Each overlap.
        problems: String,
    },
}

/// What arrives on the agent's mailbox from threads and workers.
enum Msg {
    /// A worker finished a record.
    Done(Report, Options),
    /// The central poller.
    Central(FromCentral),
    /// A compliance request's run ended.
    RequestDone(room::Done),
}

/// The agent: the rooms, and the context its workers share.
struct Agent {
    ctx: Ctx,
    opts: RunOptions,
    tx: mpsc::UnboundedSender<Msg>,
    watch: Watcher,
    schedule: Schedule,
    control: Control,
    requests: Requests,
    status: Reporter,
    /// The audit checkpoint thread (issue #14).
    proof: crate::proof::service::Hook,
}

/// The signals the daemon answers.
struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    hup: Signal,
    /// Test hook: with EXPORTD_TEST_STALL_ON_USR1=<seconds>, SIGUSR1 blocks the
    /// main loop that long (shows that watchdog pings stop when the loop is stuck).
    stall: Option<u64>,
}

impl Signals {
    fn new() -> Result<Signals, AgentError> {
        let on = |k| signal(k).map_err(|e| AgentError::Runtime(e.to_string()));
        let term = on(SignalKind::terminate())?;
        let int = on(SignalKind::interrupt())?;
        let stall: Option<u64> = std::env::var("EXPORTD_TEST_STALL_ON_USR1")
            .ok()
            .and_then(|v| v.parse().ok());
        let usr1 = on(SignalKind::user_defined1())?;
        let hup = on(SignalKind::hangup())?;
        Ok(Signals {
            term,
            int,
            usr1,
            hup,
            stall,
        })
    }
}

/// Runs the daemon until SIGTERM/SIGINT (or, with `until_idle`, until the
/// spool as present is processed).
pub fn run(cfg_path: &Path, opts: RunOptions) -> Result<RunSummary, AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .map_err(|e| AgentError::Runtime(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_async(cfg_path, opts))
}

async fn run_async(cfg_path: &Path, opts: RunOptions) -> Result<RunSummary, AgentError> {
    // The compiled snapshot holds what matching needs: the inline users (up to
    // 100,000) are not parsed here, nor kept. Requests re-read the model.
    let (cfg, cfg_sha256) = LocalConfig::load_head(cfg_path)?;
    // One state-writing process per state_dir, for this process's whole life
    // (taken before anything in the state_dir is opened or written).
    let _state_lock = crate::ledger::state_lock::lock_exclusive(&cfg.state_dir)?;
    let (mut a, mut rx) = Agent::new(cfg_path, cfg, &cfg_sha256, opts)?;
    let mut signals = Signals::new()?;
    a.start();
    a.serve(&mut rx, &mut signals).await?;
    Ok(a.finish())
}

impl Agent {
    /// Opens the state, checks the model in force and sets up every room.
    fn new(
        cfg_path: &Path,
        cfg: LocalConfig,
        cfg_sha256: &[u8; 32],
        opts: RunOptions,
    ) -> Result<(Agent, mpsc::UnboundedReceiver<Msg>), AgentError> {
        let ctx = make_ctx(cfg_path, &cfg, cfg_sha256)?;
        // The same check as for a pushed bundle, resolved: also catches a model
        // in force from before it, and a local target reaching the spool through
        // a symbolic link.
        setup::check_spool_overlap(&ctx.snap, &cfg.spool)?;
        let control = Control::new(cfg_path, cfg, &ctx)?;
        let cfg = control.cfg();
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = Watcher::new(WatchSetup {
            spool: cfg.spool.clone(),
            cfg_path: cfg_path.to_path_buf(),
            keys_dir: cfg.keys_dir.clone(),
            inbox: crate::control::bundle::inbox::inbox_dir(&cfg.state_dir),
            journal: ctx.journal.clone(),
            writing: ctx.writing.clone(),
        })
        .map_err(AgentError::Runtime)?;
        let post_tx = tx.clone();
        let post: room::Post = Arc::new(move |d| {
            let _ = post_tx.send(Msg::RequestDone(d));
        });
        let metrics_file = cfg
            .metrics_file
            .clone()
            .unwrap_or_else(|| metrics::default_path(&cfg.state_dir));
        let mut status = Reporter::new(
            &cfg.agent_id,
            ctx.snap.version(),
            &cfg.state_dir,
            metrics_file,
        );
        status.set_targets(&target_ids(&ctx));
        let a = Agent {
            proof: crate::proof::service::Hook::start(cfg, &ctx.targets),
            status,
            schedule: Schedule::new(cfg.workers, cfg.incomplete_grace_s, opts.until_idle),
            requests: Requests::new(&cfg.state_dir, post),
            watch,
            control,
            ctx,
            opts,
            tx,
        };
        Ok((a, rx))
    }

    /// Watches, takes the inbox, resumes requests, starts central, scans
    /// the spool and tells systemd the agent is ready.
    fn start(&mut self) {
        self.watch.watch_keys();
        // The bundle inbox: signed configurations and export requests dropped as files.
        if self.control.make_inbox() {
            self.watch.watch_inbox();
        }
        let out = self.control.process_inbox(&mut self.ctx);
        self.route_control(out);
        self.requests.expire(&self.ctx);
        self.requests.resume(&self.ctx);
        self.control
            .start_central(self.status.shared(), self.tx.clone(), Msg::Central);
        if let Some(e) = crate::control::poller::problem(self.control.cfg()) {
            // Logged by the poller; shown in `status`, metrics and STATUS= too.
            self.status.central_disabled(format!(
                "central is configured but disabled: {e}; fix [central] and restart"
            ));
        }
        let out = self.watch.rescan(true);
        self.route_watch(out);
        info!(
            records_queued = self.schedule.queued_len(),
            model_version = self.ctx.snap.version(),
            users = self.ctx.snap.user_count(),
            "exportd ready"
        );
        self.status.ready();
    }

    /// The loop: start what can run, then wait for the next event of any
    /// room and route it; until stopped (or idle, with `until_idle`).
    async fn serve(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        sig: &mut Signals,
    ) -> Result<(), AgentError> {
        let mut stopping = false;
        loop {
            self.dispatch();
            self.proof.targets(&self.ctx.targets);
            self.status
                .spool_roots_in_doubt(&self.watch.roots_in_doubt());
            self.status
                .watch_limit_reached(self.watch.watch_limit_reached());
            self.status.arm();
            if self.opts.until_idle && self.idle() {
                return Ok(());
            }
            if stopping && self.schedule.none_in_flight() {
                return Ok(());
            }
            let deadline = [self.next_timer(), self.status.next_timer()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.watch.next_event() => {
                    let out = match ev {
                        Some(Ok(ev)) => self.watch.on_event(ev),
                        Some(Err(e)) => self.watch.on_read_error(e),
                        None => return Err(AgentError::Runtime("inotify stream ended".into())),
                    };
                    self.route_watch(out);
                }
                Some(msg) = rx.recv() => self.on_msg(msg),
                _ = sleep => self.on_tick(Instant::now()),
                _ = sig.term.recv() => {
                    info!("SIGTERM: finishing in-flight work");
                    stopping = true;
                    self.schedule.clear_queue();
                    crate::agent::notify::notify("STOPPING=1");
                }
                _ = sig.int.recv() => {
                    info!("SIGINT: finishing in-flight work");
                    stopping = true;
                    self.schedule.clear_queue();
                }
                _ = sig.hup.recv() => {
                    let out = self.control.reload(&mut self.ctx);
                    self.route_control(out);
                }
                _ = sig.usr1.recv() => {
                    if let Some(secs) = sig.stall {
                        warn!("test hook: stalling the main loop for {secs} s");
                        std::thread::sleep(Duration::from_secs(secs));
                    }
                }
            }
        }
    }

    /// The last status, written, and the run's summary.
    fn finish(mut self) -> RunSummary {
        self.proof.stop();
        self.status.stop(&self.schedule, self.ctx.snap.version());
        RunSummary {
            counts: self.status.status().counts.clone(),
            failures: self.schedule.failures(),
            status: self.status.status().clone(),
        }
    }

    /// Starts queued records on blocking workers while some are free.
    fn dispatch(&mut self) {
        let (ctx, tx) = (&self.ctx, &self.tx);
        self.schedule.dispatch(&mut |x, o| {
            let ctx = ctx.clone();
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let rep = export::process(&ctx, &x, o);
                let _ = tx.send(Msg::Done(rep, o));
            });
        });
    }

    fn held(&self) -> bool {
        self.opts
            .hold
            .as_ref()
            .is_some_and(|h| h.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn idle(&self) -> bool {
        !self.held() && self.watch.is_settled() && self.requests.is_idle() && self.schedule.idle()
    }

    fn next_timer(&self) -> Option<Instant> {
        let held = self
            .held()
            .then(|| Instant::now() + Duration::from_millis(200));
        [
            self.schedule.next_timer(),
            self.watch.next_timer(),
            held,
            self.requests.next_timer(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A timer fired: the status flush and watchdog, then every room's
    /// timers in a fixed order.
    fn on_tick(&mut self, now: Instant) {
        self.status
            .fire(now, &self.schedule, self.ctx.snap.version());
        let out = self.watch.fire_uncertain(now);
        self.route_watch(out);
        self.requests.fire(now, &self.ctx);
        self.schedule.fire(now);
        let out = self.watch.fire_folders(now);
        self.route_watch(out);
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Done(rep, o) => self.on_report(rep, o),
            Msg::Central(m) => {
                let out = self.control.on_central(&mut self.ctx, m);
                self.route_control(out);
            }
            Msg::RequestDone(d) => {
                self.requests.on_done(d);
                self.status.touch();
                self.control.kick();
            }
        }
    }

    /// A worker finished: the status counts its rows, the schedule decides
    /// what follows.
    fn on_report(&mut self, rep: Report, o: Options) {
        for target in self.status.count_rows(&rep) {
            // Its outage is over: what waited for it goes now, not after
            // the rest of its backoff.
            self.schedule.retry_now(&target);
        }
        let counted = self.schedule.on_report(&rep, o);
        if let Outcome::Writing(files) = &rep.outcome {
            // A file closed while the worker was reporting: its close event
            // came before the record waited on it, so wake it now.
            let closed: Vec<&PathBuf> = {
                let writing = self.ctx.writing.lock().unwrap_or_else(|p| p.into_inner());
                files.iter().filter(|f| !writing.contains(*f)).collect()
            };
            for f in closed {
                self.schedule.file_complete(f);
            }
        }
        let forget = counted.forget;
        self.status
            .count(counted, &rep.xml.path, self.schedule.incomplete_len());
        if forget {
            self.forget_journal(rep.xml.key);
        }
    }

    /// What the watch room saw, routed in order.
    fn route_watch(&mut self, out: Vec<WatchOut>) {
        for o in out {
            match o {
                WatchOut::Found(x, opts) => {
                    debug!(path = %x.path.display(), from_scan = opts.from_scan, "metadata XML found");
                    self.schedule.enqueue(x, opts)
                }
                WatchOut::ContentComplete(p) => {
                    debug!(file = %p.display(), "content file closed, deleted or moved away");
                    self.schedule.file_complete(&p)
                }
                WatchOut::Forget(key) => {
                    self.schedule.settle(key);
                    self.forget_journal(key);
                }
                WatchOut::KeysChanged => {
                    let out = self.control.reload_keys(&mut self.ctx);
                    self.route_control(out);
                }
                WatchOut::InboxChanged => {
                    let out = self.control.process_inbox(&mut self.ctx);
                    self.route_control(out);
                }
                WatchOut::Error {
                    path,
                    code,
                    message,
                } => self.status.note_error(&path, code, message),
                WatchOut::Changed => self.status.touch(),
            }
        }
    }

    /// What the control room says follows, routed in order.
    fn route_control(&mut self, out: Vec<ControlOut>) {
        for o in out {
            match o {
                ControlOut::ModelSwapped => {
                    self.schedule.release_blocked(false);
                    self.status.set_targets(&target_ids(&self.ctx));
                }
                ControlOut::KeysChanged => self.schedule.release_blocked(true),
                ControlOut::Reconfigured {
                    workers,
                    grace_s,
                    keys_dir,
                } => {
                    self.schedule.set_limits(workers, grace_s);
                    if self.watch.set_keys_dir(keys_dir) {
                        // Read again now that the new folder is watched: an
                        // identity added since the reload read it is not
                        // missed.
                        let out = self.control.reload_keys(&mut self.ctx);
                        self.route_control(out);
                    }
                }
                ControlOut::RequestAccepted(req) => self.requests.spawn(req, &self.ctx),
                ControlOut::Applied(ok, at) => self.status.applied(ok, at),
                ControlOut::Rejected(r) => self.status.rejected(r),
                ControlOut::Changed => self.status.touch(),
            }
        }
    }

    /// Forgets a record version's journal entry (its XML is gone).
    fn forget_journal(&mut self, key: PathKey) {
        let mut j = self.ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = j.forget(key) {
            error!("journal write failed: {e}");
        }
        drop(j);
        self.status.touch();
    }
}

/// The ids of the targets of the model in force.
fn target_ids(ctx: &Ctx) -> Vec<String> {
    ctx.snap.targets().iter().map(|t| t.id.clone()).collect()
}
