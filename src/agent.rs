//! The daemon: watches the spool with inotify, schedules records onto a
//! small pool of blocking workers, keeps grace and retry timers, reloads on
//! SIGHUP, and stops cleanly on SIGTERM.
//!
//! It runs on a single-threaded tokio runtime and sleeps in `epoll` when
//! nothing happens: the only timers are pending grace periods, retry
//! backoffs, a status flush after a change, and systemd's watchdog when
//! systemd asks for one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::audit::{Action, AuditError, AuditLog, Row};
use crate::bundle::central::{
    CentralClient, FetchOutcome, Rejection, RequestProgress, StatusReport,
};
use crate::bundle::{Accepted, BundleError, BundleState};
use crate::config::{ConfigError, LocalConfig};
use crate::export::{self, Ctx, Keys, Options, Outcome, Report};
use crate::journal::{self, FileStore, Journal, PathKey};
use crate::model::{Model, TargetKind, TargetSpec};
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::spool::{self, XmlRef};
use crate::status::{Counts, LastError, Status};
use crate::target::{
    Target,
    fs::{FsTarget, TargetEnv},
};
use crate::time::Timestamp;

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
    Locked(#[from] crate::state_lock::LockError),
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

/// The policy model in force: the last accepted central bundle, else the
/// inline model of exportd.toml.
pub fn model_in_force(cfg: &LocalConfig) -> Model {
    match crate::bundle::BundleState::load(&cfg.state_dir) {
        Ok(st) => st.current_model().unwrap_or_else(|| cfg.inline_model()),
        Err(e) => {
            error!("the cached central bundle cannot be read ({e}); using the inline model");
            cfg.inline_model()
        }
    }
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Compiles `model` into `<state_dir>/snapshot.bin` and maps it.
pub fn install_snapshot(
    state_dir: &Path,
    model: &Model,
    source: Option<&str>,
) -> Result<Snapshot, AgentError> {
    let bytes = snapshot::compile_from(model, source)?;
    let path = state_dir.join("snapshot.bin");
    snapshot::write_atomic(&path, &bytes).map_err(state_err(&path))?;
    Ok(Snapshot::open(&path)?)
}

/// What folder targets need from the local config (state_dir, agent id).
pub fn target_env(cfg: &LocalConfig) -> TargetEnv {
    TargetEnv {
        state_dir: cfg.state_dir.clone(),
        agent_id: cfg.agent_id.clone(),
    }
}

/// Builds targets for every spec of a snapshot.
pub fn build_targets(snap: &Snapshot, env: &TargetEnv) -> Result<Vec<Arc<dyn Target>>, AgentError> {
    build_targets_from(snap.targets(), env)
}

/// Builds a target for every spec.
pub fn build_targets_from(
    specs: &[TargetSpec],
    env: &TargetEnv,
) -> Result<Vec<Arc<dyn Target>>, AgentError> {
    let mut v: Vec<Arc<dyn Target>> = Vec::new();
    for spec in specs {
        match spec.kind {
            TargetKind::Fs => v.push(Arc::new(FsTarget::new(spec, env))),
            TargetKind::S3 => v.push(Arc::new(crate::target::s3::S3Target::new(spec).map_err(
                |e| AgentError::Target {
                    id: spec.id.clone(),
                    msg: e.to_string(),
                },
            )?)),
        }
    }
    Ok(v)
}

/// `p` with symbolic links resolved as far as it exists: the longest
/// existing ancestor canonicalised, the rest appended (a target root that
/// is not mounted yet is compared by the folder it would be created under).
fn resolve_existing(p: &Path) -> PathBuf {
    let p = crate::model::normalize_lexically(p);
    let mut head = p.as_path();
    let mut tail: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(head) {
            let mut out = c;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return out;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name);
                head = parent;
            }
            _ => return p,
        }
    }
}

/// Every folder target of `targets` whose root overlaps a spool root, as
/// configured or after resolving symbolic links on either side.
pub fn spool_overlap_problems(targets: &[TargetSpec], spool: &[PathBuf]) -> Vec<String> {
    let mut ts = Vec::new();
    for t in targets {
        if let Some(p) = &t.path {
            ts.push((t.id.clone(), p.clone(), p.clone()));
            ts.push((t.id.clone(), p.clone(), resolve_existing(p)));
        }
    }
    let mut ss = Vec::new();
    for s in spool {
        ss.push((s.clone(), s.clone()));
        ss.push((s.clone(), resolve_existing(s)));
    }
    crate::model::spool_overlaps(&ts, &ss)
        .into_iter()
        .map(|e| e.0)
        .collect()
}

/// Refuses a snapshot with a folder target overlapping a spool root.
fn check_spool_overlap(snap: &Snapshot, spool: &[PathBuf]) -> Result<(), AgentError> {
    let problems = spool_overlap_problems(snap.targets(), spool);
    if problems.is_empty() {
        return Ok(());
    }
    Err(AgentError::SpoolOverlap {
        version: snap.version(),
        problems: problems.join("; "),
    })
}

/// A configuration ready to be put in force: its snapshot compiled (and
/// checked by opening it) and its targets built, before anything is committed.
pub struct PreparedModel {
    /// The compiled snapshot file.
    bytes: Vec<u8>,
    /// Targets aligned with the snapshot's.
    targets: Vec<Arc<dyn Target>>,
}

impl std::fmt::Debug for PreparedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedModel")
            .field("bytes", &self.bytes.len())
            .field("targets", &self.targets.len())
            .finish()
    }
}

/// Builds everything putting `model` in force needs, changing nothing on
/// disk: no folder target may overlap a spool root (after resolving), the
/// snapshot must compile and open, every target must build (an S3 target's
/// `secret_file` must be readable...). The error is the reason, for the
/// rejection.
pub fn prepare_model(
    model: &Model,
    source: &str,
    spool: &[PathBuf],
    env: &TargetEnv,
) -> Result<PreparedModel, String> {
    let overlaps = spool_overlap_problems(&model.targets, spool);
    if !overlaps.is_empty() {
        return Err(overlaps.join("; "));
    }
    let bytes = snapshot::compile_from(model, Some(source))
        .map_err(|e| format!("the snapshot cannot be compiled: {e}"))?;
    Snapshot::from_bytes(bytes.clone())
        .map_err(|e| format!("the compiled snapshot does not open: {e}"))?;
    let targets = build_targets_from(&model.targets, env).map_err(|e| e.to_string())?;
    Ok(PreparedModel { bytes, targets })
}

/// The snapshot source key of an accepted configuration bundle.
fn bundle_source(payload: &[u8]) -> String {
    use sha2::Digest;
    format!("bundle:{}", hex::encode(sha2::Sha256::digest(payload)))
}

/// The preparation step for every bundle the daemon applies (inbox and
/// central): configurations are prepared with [`prepare_model`]; export
/// requests need nothing before their commit.
fn prepare_bundle<'a>(
    spool: &'a [PathBuf],
    env: &'a TargetEnv,
) -> impl FnMut(&Accepted) -> Result<Option<PreparedModel>, String> + 'a {
    move |a| match a {
        Accepted::Config(c) => {
            prepare_model(&c.model, &bundle_source(&c.payload), spool, env).map(Some)
        }
        Accepted::ExportRequest(_) => Ok(None),
    }
}

struct Pending {
    xml: XmlRef,
    deadline: Option<Instant>,
    missing: Vec<PathBuf>,
}

struct Retry {
    xml: XmlRef,
    at: Instant,
    attempt: u32,
    opts: Options,
}

enum Msg {
    Done(Report, Options),
    Central(FetchOutcome),
    /// A bundle from central, checked, prepared and committed.
    CentralApplied(Accepted, Option<PreparedModel>),
    RequestDone(String, Result<String, String>),
}

struct Agent {
    cfg_path: PathBuf,
    cfg: LocalConfig,
    ctx: Ctx,
    opts: RunOptions,
    queue: VecDeque<(XmlRef, Options)>,
    queued: HashSet<PathKey>,
    inflight: HashSet<PathKey>,
    dirty: HashMap<PathKey, XmlRef>,
    incomplete: HashMap<PathKey, Pending>,
    waiting_files: HashMap<PathBuf, HashSet<PathKey>>,
    retry: HashMap<PathKey, Retry>,
    blocked: HashMap<PathKey, (XmlRef, String, bool)>,
    failures: HashMap<PathKey, String>,
    attempts: HashMap<PathKey, u32>,
    watches: HashMap<WatchDescriptor, PathBuf>,
    degraded: bool,
    status: Status,
    status_dirty: bool,
    keys_fp: [u8; 32],
    tx: mpsc::UnboundedSender<Msg>,
    /// Accepted bundles and granted keys; shared with the central poller.
    bundle: Option<Arc<Mutex<BundleState>>>,
    /// Requests running in this daemon.
    requests_running: HashSet<String>,
    /// When the next completed compliance export expires.
    next_expiry: Option<Instant>,
    /// The status as last flushed, for the central heartbeat.
    shared_status: Arc<Mutex<Status>>,
    /// Wakes the central thread to report at once.
    central_kick: Option<std::sync::mpsc::Sender<()>>,
    /// When each unfinished record was first queued (oldest pending age).
    pending_since: HashMap<PathKey, Instant>,
    /// The last configuration apply: success, unix seconds.
    last_apply: Option<(bool, f64)>,
    /// Files found in a new folder whose creation was not seen (possibly
    /// still being written), with the time to look at them again.
    uncertain: HashMap<PathBuf, Instant>,
    /// Records whose listed files are all there but some still being written.
    writing_wait: HashMap<PathKey, XmlRef>,
    /// Spool folders whose content is unknown (a root missing, unreadable,
    /// or empty while the journal knows records under it; a folder whose
    /// listing failed): listed again with backoff until they can be.
    doubts: HashMap<PathBuf, Doubt>,
    /// Existing ancestors of missing spool roots, watched for the root to appear.
    ancestors: HashSet<PathBuf>,
}

/// A spool folder in doubt (see `Agent::doubts`).
struct Doubt {
    /// When to list it again.
    at: Instant,
    /// Listings tried so far.
    attempt: u32,
    /// An empty listing does not settle it (a root that may not be mounted).
    want_records: bool,
}

/// How long a folder in doubt waits before it is listed again: 1 s, 2 s,
/// 4 s ... up to a minute.
fn doubt_backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(7).saturating_sub(1)).min(60))
}

/// How long a file found without its creation event must stay unchanged
/// before it is taken as complete (when its close event was not seen).
const UNCERTAIN_RECHECK: Duration = Duration::from_secs(5);

fn recently_modified(p: &Path) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < UNCERTAIN_RECHECK)
}

const WATCH_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

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

/// The snapshot of the model in force: the existing `snapshot.bin` when it
/// was compiled from the same source (the accepted bundle's payload, else the
/// config file's bytes), otherwise compiled afresh. An unchanged model with
/// 100,000 users is thus neither parsed nor compiled at startup.
///
/// `config_sha256` is the SHA-256 of the config file as read by
/// [`LocalConfig::load_head`] (the file is not read again to hash it).
pub fn snapshot_in_force(
    cfg_path: &Path,
    state_dir: &Path,
    config_sha256: &[u8; 32],
) -> Result<Snapshot, AgentError> {
    use sha2::Digest;
    let bundle = match BundleState::load(state_dir) {
        Ok(b) => Some(b),
        Err(e) => {
            error!("the cached central bundle cannot be read ({e}); using the inline model");
            None
        }
    };
    let source = match bundle.as_ref().and_then(|b| b.current_payload()) {
        Some(p) => format!("bundle:{}", hex::encode(sha2::Sha256::digest(p))),
        None => format!("config:{}", hex::encode(config_sha256)),
    };
    if let Ok(s) = Snapshot::open(&state_dir.join("snapshot.bin")) {
        if s.source() == Some(source.as_str()) {
            return Ok(s);
        }
    }
    let model = match bundle.and_then(|b| b.current_model()) {
        Some(m) => m,
        None => LocalConfig::load(cfg_path)?.take_inline_model(),
    };
    install_snapshot(state_dir, &model, Some(&source))
}

/// Sets up the shared context from a config.
pub fn make_ctx(
    cfg_path: &Path,
    cfg: &LocalConfig,
    config_sha256: &[u8; 32],
) -> Result<Ctx, AgentError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(state_err(&cfg.state_dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700));
    }
    let jpath = cfg.state_dir.join("journal.log");
    let journal = Journal::open(FileStore::new(jpath.clone())).map_err(state_err(&jpath))?;
    let audit = AuditLog::open(&cfg.state_dir)?;
    let mut journal = journal;
    // Before any worker runs: export rows written just before a crash
    // without their journal entry are found (see `recovery`).
    crate::recovery::recover(audit.dir(), &mut journal).map_err(state_err(&jpath))?;
    let snap = snapshot_in_force(cfg_path, &cfg.state_dir, config_sha256)?;
    let targets = build_targets(&snap, &target_env(cfg))?;
    for t in &targets {
        let n = t.recover();
        if n > 0 {
            info!(target = %t.spec().id, "removed {n} temp files left by an interrupted run");
        }
    }
    let keys: Arc<dyn Keys> = export::load_keys(&cfg.keys_dir);
    let roots = cfg
        .spool
        .iter()
        .map(|r| {
            (
                r.clone(),
                std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()),
            )
        })
        .collect();
    Ok(Ctx {
        snap: Arc::new(snap),
        targets: Arc::new(targets),
        keys,
        window: journal.window(),
        journal: Arc::new(Mutex::new(journal)),
        audit: Arc::new(Mutex::new(audit)),
        reported: Arc::new(Mutex::new(HashSet::new())),
        roots: Arc::new(roots),
        writing: Arc::new(Mutex::new(HashSet::new())),
    })
}

async fn run_async(cfg_path: &Path, opts: RunOptions) -> Result<RunSummary, AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    // The compiled snapshot holds what matching needs: the inline users (up to
    // 100,000) are not parsed here, nor kept. Requests re-read the model.
    let (cfg, cfg_sha256) = LocalConfig::load_head(cfg_path)?;
    // One state-writing process per state_dir, for this process's whole life
    // (taken before anything in the state_dir is opened or written).
    let _state_lock = crate::state_lock::lock_exclusive(&cfg.state_dir)?;
    let ctx = make_ctx(cfg_path, &cfg, &cfg_sha256)?;
    // The same check as for a pushed bundle, resolved: also catches a model
    // in force from before it, and a local target reaching the spool through
    // a symbolic link.
    check_spool_overlap(&ctx.snap, &cfg.spool)?;
    let bundle = match BundleState::load(&cfg.state_dir) {
        Ok(b) => Some(Arc::new(Mutex::new(b))),
        Err(e) => {
            error!("signed bundles are disabled: {e}");
            None
        }
    };
    if let Err(e) = crate::bundle::trust::TrustSet::new(&cfg.trust, &[]) {
        return Err(AgentError::Runtime(format!(
            "trust anchors in {}: {e}",
            cfg_path.display()
        )));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let inotify =
        Inotify::init().map_err(|e| AgentError::Runtime(format!("inotify_init failed: {e}")))?;
    let mut stream = inotify
        .into_event_stream(vec![0u8; 64 << 10])
        .map_err(|e| AgentError::Runtime(format!("inotify stream: {e}")))?;
    let keys_fp = ctx.keys.fingerprint();
    let mut a = Agent {
        cfg_path: cfg_path.to_path_buf(),
        status: Status {
            agent_id: cfg.agent_id.clone(),
            pid: std::process::id(),
            state: "running".into(),
            started_at: Timestamp::now().rfc3339().to_string(),
            model_version: ctx.snap.version(),
            ..Status::default()
        },
        cfg,
        ctx,
        opts,
        queue: VecDeque::new(),
        queued: HashSet::new(),
        inflight: HashSet::new(),
        dirty: HashMap::new(),
        incomplete: HashMap::new(),
        waiting_files: HashMap::new(),
        retry: HashMap::new(),
        blocked: HashMap::new(),
        failures: HashMap::new(),
        attempts: HashMap::new(),
        watches: HashMap::new(),
        degraded: false,
        status_dirty: true,
        keys_fp,
        tx,
        bundle,
        requests_running: HashSet::new(),
        next_expiry: None,
        shared_status: Arc::new(Mutex::new(Status::default())),
        central_kick: None,
        pending_since: HashMap::new(),
        last_apply: None,
        uncertain: HashMap::new(),
        writing_wait: HashMap::new(),
        doubts: HashMap::new(),
        ancestors: HashSet::new(),
    };

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Runtime(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Runtime(e.to_string()))?;
    // Test hook: with EXPORTD_TEST_STALL_ON_USR1=<seconds>, SIGUSR1 blocks the
    // main loop that long (shows that watchdog pings stop when the loop is stuck).
    let stall: Option<u64> = std::env::var("EXPORTD_TEST_STALL_ON_USR1")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut sigusr1 =
        signal(SignalKind::user_defined1()).map_err(|e| AgentError::Runtime(e.to_string()))?;
    let mut sighup =
        signal(SignalKind::hangup()).map_err(|e| AgentError::Runtime(e.to_string()))?;

    // Keys folder: a new identity retries records waiting for one.
    if a.cfg.keys_dir.is_dir() {
        if let Ok(wd) = stream.watches().add(
            &a.cfg.keys_dir,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::ATTRIB,
        ) {
            a.watches.insert(wd, a.cfg.keys_dir.clone());
        }
    }
    // The bundle inbox: signed configurations and export requests dropped as files.
    let inbox = crate::bundle::inbox::inbox_dir(&a.cfg.state_dir);
    if std::fs::create_dir_all(&inbox).is_ok() {
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&inbox, std::fs::Permissions::from_mode(0o700));
        }
        if let Ok(wd) = stream.watches().add(
            &inbox,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
        ) {
            a.watches.insert(wd, inbox.clone());
        }
    }
    a.process_inbox();
    a.expire_requests();
    a.resume_requests();
    a.start_central();
    a.rescan(&mut stream.watches(), true);
    info!(
        records_queued = a.queue.len(),
        model_version = a.ctx.snap.version(),
        users = a.ctx.snap.user_count(),
        "exportd ready"
    );
    crate::notify::notify("READY=1");
    let watchdog = crate::notify::watchdog_interval();
    let mut next_watchdog = watchdog.map(|d| Instant::now() + d);
    let mut next_status_flush: Option<Instant> = None;
    let mut stopping = false;

    loop {
        a.dispatch();
        if a.status_dirty && next_status_flush.is_none() {
            next_status_flush = Some(Instant::now() + Duration::from_secs(1));
        }
        if a.opts.until_idle && a.idle() {
            break;
        }
        if stopping && a.inflight.is_empty() {
            break;
        }
        let deadline = [a.next_timer(), next_status_flush, next_watchdog]
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
            ev = std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)) => {
                match ev {
                    Some(Ok(ev)) => {
                        let mut w = stream.watches();
                        a.on_event(&mut w, ev.wd, ev.mask, ev.name);
                    }
                    Some(Err(e)) => {
                        error!("reading inotify events failed: {e}; rescanning");
                        a.rescan(&mut stream.watches(), false);
                    }
                    None => return Err(AgentError::Runtime("inotify stream ended".into())),
                }
            }
            Some(msg) = rx.recv() => {
                match msg {
                    Msg::Done(rep, o) => a.on_report(rep, o),
                    Msg::Central(out) => a.on_central(out),
                    Msg::CentralApplied(acc, prepared) => a.on_bundle("central", Ok(acc), prepared),
                    Msg::RequestDone(id, r) => a.on_request_done(id, r),
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if next_status_flush.is_some_and(|d| d <= now) {
                    next_status_flush = None;
                    a.flush_status();
                }
                if next_watchdog.is_some_and(|d| d <= now) {
                    crate::notify::notify("WATCHDOG=1");
                    next_watchdog = watchdog.map(|d| now + d);
                }
                a.fire_timers(now, &mut stream.watches());
            }
            _ = sigterm.recv() => { info!("SIGTERM: finishing in-flight work"); stopping = true; a.queue.clear(); a.queued.clear(); crate::notify::notify("STOPPING=1"); }
            _ = sigint.recv() => { info!("SIGINT: finishing in-flight work"); stopping = true; a.queue.clear(); a.queued.clear(); }
            _ = sighup.recv() => { a.reload(); }
            _ = sigusr1.recv() => {
                if let Some(secs) = stall {
                    warn!("test hook: stalling the main loop for {secs} s");
                    std::thread::sleep(Duration::from_secs(secs));
                }
            }
        }
    }
    a.status.state = "stopped".into();
    a.flush_status();
    let mut failures: Vec<String> = a.failures.values().cloned().collect();
    failures.sort();
    Ok(RunSummary {
        counts: a.status.counts.clone(),
        failures,
        status: a.status.clone(),
    })
}

impl Agent {
    fn root_of(&self, p: &Path) -> Option<PathBuf> {
        self.cfg
            .spool
            .iter()
            .filter(|r| p.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .cloned()
    }

    fn add_watch(&mut self, w: &mut inotify::Watches, dir: &Path) {
        match w.add(dir, WATCH_MASK) {
            Ok(wd) => {
                self.watches.insert(wd, dir.to_path_buf());
            }
            Err(e) if e.raw_os_error() == Some(28) => {
                if !self.degraded {
                    error!(
                        "inotify watch limit reached at {}: raise fs.inotify.max_user_watches; until then the spool is rescanned every 30 s so no record is lost",
                        dir.display()
                    );
                }
                self.degraded = true;
            }
            Err(e) => warn!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// Full rescan of every root: (re)watch every folder, queue every XML
    /// that is not finished. At startup, forget journal entries whose XML is
    /// gone, but only when every root was listed completely and none is
    /// empty while the journal knows records that were not found: a root
    /// not mounted, unreadable or half-listed is "unknown", never "deleted".
    fn rescan(&mut self, w: &mut inotify::Watches, startup: bool) {
        let roots = self.cfg.spool.clone();
        // Bounded memory: the journal marks what is seen in its own index
        // (no set of every key), and only unfinished XMLs are kept.
        let mut found: Vec<XmlRef> = Vec::new();
        let mut complete = true;
        let mut empty: Vec<PathBuf> = Vec::new();
        if startup {
            self.ctx
                .journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .begin_sweep();
        }
        self.degraded = false;
        for root in &roots {
            let rep = self.scan_folder(w, root, root, &mut found, startup);
            complete &= rep.complete;
            if rep.complete && rep.xmls == 0 {
                empty.push(root.clone());
            }
        }
        self.enqueue_found(found);
        if startup {
            let prune = complete && empty.is_empty();
            let journal = self.ctx.journal.clone();
            let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
            let unseen = j.unseen();
            if prune {
                if let Err(e) = j.prune_unseen() {
                    error!("journal compaction failed: {e}");
                }
            }
            drop(j);
            if !prune && unseen > 0 {
                if complete {
                    for root in &empty {
                        warn!(
                            "spool root {} is empty while the journal knows {unseen} records not found in the spool: treated as unknown (not mounted?), nothing is forgotten; it is listed again until records appear",
                            root.display()
                        );
                        self.doubt(root.clone(), true);
                    }
                } else {
                    warn!(
                        "the spool could not be listed completely: the {unseen} journal entries of records not found are kept (unknown, not deleted)"
                    );
                }
            }
        }
        self.status_dirty = true;
    }

    /// Lists `start` (a root or a folder below `root`), watching every
    /// folder before it is read; what cannot be listed is put in doubt.
    fn scan_folder(
        &mut self,
        w: &mut inotify::Watches,
        root: &Path,
        start: &Path,
        found: &mut Vec<XmlRef>,
        sweep: bool,
    ) -> spool::ScanReport {
        if start == root {
            // The configured path may lead through symlinks the administrator made.
            let problem = match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some("is not a folder".to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.watch_ancestor(w, root);
                    Some("is missing (not mounted?); it is watched and exported from once it appears".to_string())
                }
                Err(e) => Some(format!("cannot be read: {e}")),
            };
            if let Some(why) = problem {
                if !self.doubts.contains_key(root) {
                    error!(
                        "spool root {} {why}; check `spool` in {}",
                        root.display(),
                        self.cfg_path.display()
                    );
                    self.note_error(root, "spool_unavailable", format!("spool root {why}"));
                }
                self.doubt(root.to_path_buf(), false);
                return spool::ScanReport::default();
            }
        }
        let mut failed: Vec<PathBuf> = Vec::new();
        let journal = self.ctx.journal.clone();
        let rep = spool::scan_below(
            root,
            start,
            &mut |d| self.add_watch(w, d),
            &mut |x| {
                let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                if sweep {
                    j.mark_seen(&x.key);
                }
                if !j.is_done(&x.key, x.size, x.mtime_ns) {
                    found.push(x);
                }
            },
            &mut |_| {},
            &mut |p, e| {
                warn!(
                    "cannot list spool folder {}: {e}; what it holds is unknown until it can be listed (retried)",
                    p.display()
                );
                failed.push(p.to_path_buf());
            },
        );
        for p in failed {
            let dir = if p == start || p.is_dir() {
                p
            } else {
                p.parent().map(Path::to_path_buf).unwrap_or(p)
            };
            self.doubt(dir, false);
        }
        rep
    }

    /// Queues the unfinished XMLs a scan found (the scan already left out
    /// the finished ones).
    fn enqueue_found(&mut self, found: Vec<XmlRef>) {
        for x in found {
            self.enqueue_locked(
                x,
                Options {
                    grace_expired: false,
                    from_scan: true,
                },
            );
        }
    }

    /// Puts a spool folder in doubt (or keeps it there, one backoff step further).
    fn doubt(&mut self, path: PathBuf, want_records: bool) {
        let d = self.doubts.entry(path).or_insert(Doubt {
            at: Instant::now(),
            attempt: 0,
            want_records,
        });
        d.attempt += 1;
        d.want_records |= want_records;
        d.at = Instant::now() + doubt_backoff(d.attempt);
    }

    /// Lists the folders in doubt whose time has come.
    fn recheck_doubts(&mut self, now: Instant, w: &mut inotify::Watches) {
        let due: Vec<PathBuf> = self
            .doubts
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            let Some(root) = self.root_of(&p) else {
                self.doubts.remove(&p);
                continue;
            };
            let want_records = self.doubts.get(&p).is_some_and(|d| d.want_records);
            let mut found = Vec::new();
            let rep = self.scan_folder(w, &root, &p, &mut found, false);
            let n = found.len();
            self.enqueue_found(found);
            let settled = rep.complete && (!want_records || rep.xmls > 0);
            if settled {
                if let Some(d) = self.doubts.remove(&p) {
                    info!(
                        "spool folder {} can be listed again ({} records found after {} attempts)",
                        p.display(),
                        n,
                        d.attempt
                    );
                }
            } else if rep.complete {
                // Listed, still empty: look again later.
                self.doubt(p, want_records);
            }
            // Otherwise scan_folder has put it back in doubt.
        }
        self.status_dirty = true;
    }

    /// Watches the nearest existing ancestor of a missing root, so that the
    /// root is listed as soon as it (or a folder on the way) is created.
    fn watch_ancestor(&mut self, w: &mut inotify::Watches, root: &Path) {
        let mut a = root.parent();
        while let Some(p) = a {
            if p.is_dir() {
                if self.ancestors.contains(p) {
                    return;
                }
                match w.add(
                    p,
                    WatchMask::CREATE
                        | WatchMask::MOVED_TO
                        | WatchMask::ONLYDIR
                        | WatchMask::MASK_ADD,
                ) {
                    Ok(wd) => {
                        self.watches.entry(wd).or_insert_with(|| p.to_path_buf());
                        self.ancestors.insert(p.to_path_buf());
                    }
                    Err(e) => warn!(
                        "cannot watch {} for spool root {} to appear ({e}); it is looked for with backoff",
                        p.display(),
                        root.display()
                    ),
                }
                return;
            }
            a = p.parent();
        }
    }

    /// Remembers an error for `status`.
    fn note_error(&mut self, path: &Path, code: &str, message: String) {
        self.status.last_errors.push(LastError {
            at: Timestamp::now().rfc3339().to_string(),
            path: path.display().to_string(),
            code: code.to_string(),
            message,
        });
        if self.status.last_errors.len() > 20 {
            self.status.last_errors.remove(0);
        }
        self.status_dirty = true;
    }

    fn enqueue_locked(&mut self, x: XmlRef, o: Options) {
        self.pending_since.entry(x.key).or_insert_with(Instant::now);
        if self.inflight.contains(&x.key) {
            self.dirty.insert(x.key, x);
            return;
        }
        if self.queued.insert(x.key) {
            self.retry.remove(&x.key);
            self.queue.push_back((x, o));
        }
    }

    fn enqueue(&mut self, x: XmlRef, o: Options) {
        self.enqueue_locked(x, o);
    }

    fn dispatch(&mut self) {
        while self.inflight.len() < self.cfg.workers {
            let Some((x, o)) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&x.key);
            self.inflight.insert(x.key);
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let rep = export::process(&ctx, &x, o);
                let _ = tx.send(Msg::Done(rep, o));
            });
        }
    }

    fn held(&self) -> bool {
        self.opts
            .hold
            .as_ref()
            .is_some_and(|h| h.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn idle(&self) -> bool {
        !self.held()
            && self.writing_wait.is_empty()
            && self.uncertain.is_empty()
            && self.requests_running.is_empty()
            && self.queue.is_empty()
            && self.inflight.is_empty()
            && self.retry.is_empty()
            && self.incomplete.values().all(|p| p.deadline.is_none())
    }

    fn next_timer(&self) -> Option<Instant> {
        let a = self.incomplete.values().filter_map(|p| p.deadline).min();
        let b = self.retry.values().map(|r| r.at).min();
        let c = self
            .degraded
            .then(|| Instant::now() + Duration::from_secs(30));
        let d = self
            .held()
            .then(|| Instant::now() + Duration::from_millis(200));
        let e = self.uncertain.values().min().copied();
        let f = self.doubts.values().map(|d| d.at).min();
        [a, b, c, d, e, f, self.next_expiry]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire_timers(&mut self, now: Instant, w: &mut inotify::Watches) {
        let due: Vec<PathBuf> = self
            .uncertain
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            if p.exists() && recently_modified(&p) {
                self.uncertain.insert(p, now + UNCERTAIN_RECHECK);
                continue;
            }
            self.uncertain.remove(&p);
            self.file_closed(&p);
        }
        if self.next_expiry.is_some_and(|d| d <= now) {
            self.expire_requests();
        }
        let due: Vec<PathKey> = self
            .incomplete
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(p) = self.incomplete.get_mut(&k) {
                p.deadline = None;
                let x = p.xml.clone();
                self.enqueue(
                    x,
                    Options {
                        grace_expired: true,
                        from_scan: false,
                    },
                );
            }
        }
        let due: Vec<PathKey> = self
            .retry
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(r) = self.retry.remove(&k) {
                // keep the attempt count for the next backoff
                self.attempts.insert(k, r.attempt);
                self.enqueue(r.xml, r.opts);
            }
        }
        if self.doubts.values().any(|d| d.at <= now) {
            self.recheck_doubts(now, w);
        }
        if self.degraded {
            self.rescan(w, false);
        }
    }

    fn on_event(
        &mut self,
        w: &mut inotify::Watches,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<OsString>,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("inotify queue overflowed: rescanning the spool so no record is lost");
            // Close events may be among the lost ones.
            self.ctx
                .writing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.rescan(w, false);
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            if let Some(p) = self.watches.remove(&wd) {
                // A root deleted or unmounted under us: unknown until listed again.
                if self.cfg.spool.contains(&p) {
                    warn!(
                        "spool root {} went away (deleted or unmounted); it is looked for again",
                        p.display()
                    );
                    self.doubt(p, false);
                }
            }
            return;
        }
        let Some(dir) = self.watches.get(&wd).cloned() else {
            return;
        };
        if self.ancestors.contains(&dir) && self.root_of(&dir).is_none() {
            // A folder appeared on the way to a missing root: look now.
            if mask.contains(EventMask::ISDIR) {
                let now = Instant::now();
                for (p, d) in self.doubts.iter_mut() {
                    if p.starts_with(&dir) {
                        d.at = now;
                    }
                }
            }
            return;
        }
        let Some(name) = name else { return };
        let Some(name_s) = name.to_str() else { return };
        let path = dir.join(name_s);
        if dir == self.cfg.keys_dir {
            self.reload_keys();
            return;
        }
        if dir == crate::bundle::inbox::inbox_dir(&self.cfg.state_dir) {
            if !spool::is_temp_name(name_s) {
                self.process_inbox();
            }
            return;
        }
        if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && !name_s.starts_with('.')
            {
                // A new folder: watch it, then scan it (files may have landed before the watch).
                let Some(root) = self.root_of(&path) else {
                    return;
                };
                let mut found = Vec::new();
                let mut files = Vec::new();
                // Each folder is watched before it is read, so nothing created
                // in between is missed.
                let mut failed = Vec::new();
                spool::scan_below(
                    &root,
                    &path,
                    &mut |d| self.add_watch(w, d),
                    &mut |x| found.push(x),
                    &mut |f| files.push(f.to_path_buf()),
                    &mut |p, e| {
                        warn!("cannot list spool folder {}: {e}; retried", p.display());
                        failed.push(p.to_path_buf());
                    },
                );
                for p in failed {
                    let dir = if p.is_dir() {
                        p
                    } else {
                        p.parent().map(Path::to_path_buf).unwrap_or(p)
                    };
                    self.doubt(dir, false);
                }
                // Files that landed before the watch: their creation was not
                // seen, so a recent one may still be open for writing. Treat it
                // as being written until it is closed (now watched) or has not
                // changed for a while.
                for f in files {
                    if recently_modified(&f) {
                        self.ctx
                            .writing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(f.clone());
                        self.uncertain.insert(f, Instant::now() + UNCERTAIN_RECHECK);
                    }
                }
                for x in found {
                    self.enqueue(
                        x,
                        Options {
                            grace_expired: false,
                            from_scan: true,
                        },
                    );
                }
            }
            return;
        }
        if spool::is_temp_name(name_s) {
            return;
        }
        let Some(root) = self.root_of(&path) else {
            return;
        };
        if !spool::is_metadata_name(name_s) {
            // Track content files still being written (created, not closed).
            let mut writing = self.ctx.writing.lock().unwrap_or_else(|p| p.into_inner());
            if mask.contains(EventMask::CREATE) {
                // Only a new regular file is being written: a symlink or a
                // hard link to an existing file never gets a close event.
                use std::os::unix::fs::MetadataExt;
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.nlink() == 1) {
                    writing.insert(path.clone());
                }
            } else if mask.intersects(
                EventMask::CLOSE_WRITE
                    | EventMask::MOVED_TO
                    | EventMask::DELETE
                    | EventMask::MOVED_FROM,
            ) {
                writing.remove(&path);
            }
        }
        if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            if spool::is_metadata_name(name_s) {
                if let Ok(rel) = path.strip_prefix(&root) {
                    if let Some(rel) = rel.to_str() {
                        let key = journal::path_key(&root, rel);
                        self.forget(key);
                    }
                }
            }
            return;
        }
        if !mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
            return;
        }
        if spool::is_metadata_name(name_s) {
            if let Some(x) = XmlRef::stat(&root, &path) {
                self.enqueue(x, Options::default());
            }
        } else {
            self.uncertain.remove(&path);
            self.file_closed(&path);
        }
    }

    /// A content file is complete now: records waiting for it go again.
    fn file_closed(&mut self, path: &Path) {
        self.ctx
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        if let Some(keys) = self.waiting_files.remove(path) {
            for k in keys {
                if let Some(x) = self.writing_wait.remove(&k) {
                    self.enqueue(x, Options::default());
                    continue;
                }
                if let Some(p) = self.incomplete.get(&k) {
                    let expired = p.deadline.is_none();
                    let x = p.xml.clone();
                    self.enqueue(
                        x,
                        Options {
                            grace_expired: expired,
                            from_scan: false,
                        },
                    );
                }
            }
        }
    }

    /// Drops every wait, retry and failure kept for a record version that
    /// needs nothing more.
    fn settle(&mut self, key: PathKey) {
        self.pending_since.remove(&key);
        self.writing_wait.remove(&key);
        self.incomplete.remove(&key);
        self.retry.remove(&key);
        self.blocked.remove(&key);
        self.failures.remove(&key);
    }

    fn forget(&mut self, key: PathKey) {
        self.settle(key);
        let mut j = self.ctx.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = j.forget(key) {
            error!("journal write failed: {e}");
        }
        self.status_dirty = true;
    }

    fn on_report(&mut self, rep: Report, o: Options) {
        let key = rep.xml.key;
        self.inflight.remove(&key);
        self.status_dirty = true;
        let c = &mut self.status.counts;
        for t in &rep.tallies {
            let pt = format!("{}/{}", t.policy_id, t.target_id);
            match t.action {
                "export" => {
                    *self
                        .status
                        .exported_by_policy_target
                        .entry(pt.clone())
                        .or_default() += 1;
                    *self.status.bytes_by_policy_target.entry(pt).or_default() += t.bytes;
                    c.bytes += t.bytes;
                    info!(record = rep.record_id.as_deref().unwrap_or("?"), policy = %t.policy_id, target = %t.target_id, bytes = t.bytes, "exported");
                }
                "skip" => {
                    *self
                        .status
                        .skipped_by_reason
                        .entry(t.code.clone())
                        .or_default() += 1;
                    info!(record = rep.record_id.as_deref().unwrap_or("?"), policy = %t.policy_id, reason = %t.code, "skipped");
                }
                _ => {
                    *self
                        .status
                        .errors_by_code
                        .entry(t.code.clone())
                        .or_default() += 1;
                }
            }
        }
        let path = rep.xml.path.display().to_string();
        let name = match &rep.record_id {
            Some(id) => format!("{path} ({id})"),
            None => path.clone(),
        };
        let fail = |a: &mut Agent, code: &str, msg: String| {
            warn!(record = %name, code, "{msg}");
            a.failures.insert(key, format!("{name}: {msg}"));
            a.status.last_errors.push(LastError {
                at: Timestamp::now().rfc3339().to_string(),
                path: path.clone(),
                code: code.to_string(),
                message: msg,
            });
            if a.status.last_errors.len() > 20 {
                a.status.last_errors.remove(0);
            }
        };
        let prev_attempt = self.attempts.remove(&key);
        match rep.outcome {
            Outcome::Finished(out) => {
                self.settle(key);
                self.status.counts.seen += 1;
                match out {
                    journal::Outcome::Exported => self.status.counts.exported += 1,
                    journal::Outcome::Skipped => self.status.counts.skipped += 1,
                    journal::Outcome::Rejected => {
                        self.status.counts.failed += 1;
                        let why = rep
                            .tallies
                            .last()
                            .map(|t| t.code.clone())
                            .unwrap_or_else(|| "rejected".into());
                        fail(self, &why, format!("rejected ({why}); see the audit log"));
                    }
                }
            }
            Outcome::Incomplete { missing, reported } => {
                let grace = Duration::from_secs(self.cfg.incomplete_grace_s);
                for m in &missing {
                    self.waiting_files.entry(m.clone()).or_default().insert(key);
                }
                let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
                let entry = self.incomplete.entry(key).or_insert_with(|| Pending {
                    xml: rep.xml.clone(),
                    deadline: Some(Instant::now() + grace),
                    missing: missing.clone(),
                });
                entry.xml = rep.xml.clone();
                entry.missing = missing;
                if reported || o.grace_expired {
                    entry.deadline = None;
                    fail(
                        self,
                        "incomplete",
                        format!("incomplete: missing {}", list.join(", ")),
                    );
                }
            }
            Outcome::Retry(msg) => {
                let attempt = prev_attempt.unwrap_or(0) + 1;
                if self.opts.until_idle && attempt >= 4 {
                    self.status.counts.failed += 1;
                    fail(
                        self,
                        "target_unavailable",
                        format!("gave up after {attempt} attempts: {msg}"),
                    );
                } else {
                    let backoff = backoff(attempt);
                    warn!(record = %name, attempt, "retrying in {:.1}s: {msg}", backoff.as_secs_f64());
                    self.retry.insert(
                        key,
                        Retry {
                            xml: rep.xml.clone(),
                            at: Instant::now() + backoff,
                            attempt,
                            opts: o,
                        },
                    );
                }
            }
            Outcome::Failed(msg) => {
                self.status.counts.failed += 1;
                self.blocked
                    .insert(key, (rep.xml.clone(), msg.clone(), false));
                fail(
                    self,
                    "failed",
                    format!("{msg} (retried after a configuration change)"),
                );
            }
            Outcome::NeedKey(msg) => {
                self.status.counts.failed += 1;
                self.blocked
                    .insert(key, (rep.xml.clone(), msg.clone(), true));
                fail(self, "no_identity", msg);
            }
            Outcome::Vanished => {
                self.forget(key);
            }
            Outcome::Writing(files) => {
                for m in &files {
                    self.waiting_files.entry(m.clone()).or_default().insert(key);
                }
                self.writing_wait.insert(key, rep.xml.clone());
            }
            Outcome::AlreadyDone => self.settle(key),
            Outcome::Young(_) => {
                let attempt = prev_attempt.unwrap_or(0) + 1;
                let o2 = if attempt >= 3 {
                    Options {
                        from_scan: false,
                        ..o
                    }
                } else {
                    o
                };
                self.retry.insert(
                    key,
                    Retry {
                        xml: rep.xml.clone(),
                        at: Instant::now() + Duration::from_secs(5),
                        attempt,
                        opts: o2,
                    },
                );
            }
        }
        self.status.counts.incomplete = self.incomplete.len() as u64;
        if let Some(x) = self.dirty.remove(&key) {
            self.enqueue(x, Options::default());
        }
    }

    fn flush_status(&mut self) {
        self.status_dirty = false;
        self.status.updated_at = Timestamp::now().rfc3339().to_string();
        self.status.model_version = self.ctx.snap.version();
        self.status.backlog = (self.queue.len()
            + self.inflight.len()
            + self.incomplete.len()
            + self.retry.len()
            + self.writing_wait.len()) as u64;
        self.status.retrying = self.retry.len() as u64;
        self.status.blocked = self.blocked.len() as u64;
        *self.shared_status.lock().unwrap_or_else(|p| p.into_inner()) = self.status.clone();
        if let Err(e) = self.status.write(&self.cfg.state_dir) {
            warn!(
                "cannot write {}/status.json: {e}",
                self.cfg.state_dir.display()
            );
        }
        let oldest = self
            .pending_since
            .values()
            .min()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let gauges = crate::metrics::Gauges {
            oldest_pending_age_s: (oldest * 1000.0).round() / 1000.0,
            last_apply_ok: self.last_apply.map(|a| a.0),
            last_apply_at: self.last_apply.map(|a| a.1),
        };
        if let Err(e) = crate::metrics::write(
            &self.cfg.state_dir,
            &crate::metrics::render(&self.status, &gauges),
        ) {
            warn!(
                "cannot write {}/metrics/exportd.prom: {e}",
                self.cfg.state_dir.display()
            );
        }
        crate::notify::notify(&format!(
            "STATUS=backlog {} exported {} skipped {} failed {}",
            self.status.backlog,
            self.status.counts.exported,
            self.status.counts.skipped,
            self.status.counts.failed
        ));
    }

    fn reload_keys(&mut self) {
        let keys = export::load_keys(&self.cfg.keys_dir);
        let fp = keys.fingerprint();
        if fp != self.keys_fp {
            info!("age identities changed: retrying records that were waiting for a key");
            self.keys_fp = fp;
            self.ctx.keys = keys;
            self.ctx
                .reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            let waiting: Vec<PathKey> = self
                .blocked
                .iter()
                .filter(|(_, v)| v.2)
                .map(|(k, _)| *k)
                .collect();
            for k in waiting {
                if let Some((x, _, _)) = self.blocked.remove(&k) {
                    self.failures.remove(&k);
                    self.enqueue(x, Options::default());
                }
            }
        }
    }

    /// SIGHUP: re-read exportd.toml; validate, then swap atomically.
    fn reload(&mut self) {
        info!("SIGHUP: reloading {}", self.cfg_path.display());
        // The users are parsed (and checked) only if the snapshot must be
        // compiled again, as at startup.
        let (cfg, cfg_sha256) = match LocalConfig::load_head(&self.cfg_path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused, the configuration in force stays: {e}");
                return;
            }
        };
        if cfg.spool != self.cfg.spool || cfg.state_dir != self.cfg.state_dir {
            warn!("spool and state_dir changes take effect after a restart");
        }
        let snap = match snapshot_in_force(&self.cfg_path, &self.cfg.state_dir, &cfg_sha256) {
            Ok(s) => s,
            Err(e) => {
                error!("reload refused, the configuration in force stays: {e}");
                return;
            }
        };
        if let Err(e) = self.swap_snapshot(snap) {
            error!("reload refused, the configuration in force stays: {e}");
            return;
        }
        self.cfg.incomplete_grace_s = cfg.incomplete_grace_s;
        self.cfg.workers = cfg.workers;
        self.cfg.trust = cfg.trust;
        self.cfg.central = cfg.central;
        self.cfg.keys_dir = cfg.keys_dir;
        self.reload_keys();
    }

    /// Swaps in a new model: records already running finish under the old one.
    fn apply_model(&mut self, model: &Model, source: &str) -> Result<(), AgentError> {
        let snap = install_snapshot(&self.cfg.state_dir, model, Some(source))?;
        self.swap_snapshot(snap)
    }

    /// Puts a prepared (and already committed) model in force: writes its
    /// snapshot and swaps it in with the targets built before the commit.
    /// Fails only when the snapshot file cannot be written or mapped; the
    /// committed version is then compiled again at the next start.
    fn install_prepared(&mut self, p: PreparedModel) -> Result<(), AgentError> {
        let path = self.cfg.state_dir.join("snapshot.bin");
        snapshot::write_atomic(&path, &p.bytes).map_err(state_err(&path))?;
        drop(p.bytes);
        let snap = Snapshot::open(&path)?;
        self.swap_in(snap, p.targets);
        Ok(())
    }

    fn swap_snapshot(&mut self, snap: Snapshot) -> Result<(), AgentError> {
        check_spool_overlap(&snap, &self.cfg.spool)?;
        let targets = build_targets(&snap, &target_env(&self.cfg))?;
        self.swap_in(snap, targets);
        Ok(())
    }

    fn swap_in(&mut self, snap: Snapshot, targets: Vec<Arc<dyn Target>>) {
        self.ctx.snap = Arc::new(snap);
        self.ctx.targets = Arc::new(targets);
        self.ctx
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        info!(version = self.ctx.snap.version(), "policy model in force");
        let blocked: Vec<PathKey> = self.blocked.keys().copied().collect();
        for k in blocked {
            if let Some((x, _, _)) = self.blocked.remove(&k) {
                self.failures.remove(&k);
                self.enqueue(x, Options::default());
            }
        }
        self.status_dirty = true;
    }

    /// The model in force, read again (it is not kept in memory): the
    /// accepted central bundle, else the inline model of the config file.
    fn load_model(&self) -> Model {
        match LocalConfig::load(&self.cfg_path) {
            Ok(c) => model_in_force(&c),
            Err(e) => {
                error!("cannot re-read the model in force: {e}");
                Model::default()
            }
        }
    }

    fn with_request_env<R>(&self, f: impl FnOnce(&crate::requests::RequestEnv<'_>) -> R) -> R {
        self.request_env_with(self.load_model(), f)
    }

    fn request_env_with<R>(
        &self,
        model: Model,
        f: impl FnOnce(&crate::requests::RequestEnv<'_>) -> R,
    ) -> R {
        let env = crate::requests::RequestEnv {
            state_dir: &self.cfg.state_dir,
            roots: self.ctx.roots.as_ref().clone(),
            model: &model,
            targets: &self.ctx.targets,
            keys: self.ctx.keys.clone(),
            audit: &self.ctx.audit,
        };
        f(&env)
    }

    /// Takes every file waiting in `<state_dir>/inbox/`.
    fn process_inbox(&mut self) {
        let Some(b) = self.bundle.clone() else { return };
        let outcomes = {
            let mut st = b.lock().unwrap_or_else(|p| p.into_inner());
            crate::bundle::inbox::process_inbox_with(
                &self.cfg.state_dir,
                &self.cfg.trust,
                &mut st,
                &mut prepare_bundle(&self.cfg.spool, &target_env(&self.cfg)),
            )
        };
        match outcomes {
            Ok(v) => {
                for o in v {
                    if let Some(e) = &o.move_error {
                        error!("inbox file {} could not be moved: {e}", o.name);
                    }
                    self.on_bundle(
                        &format!("inbox file {}", o.name),
                        o.result,
                        o.prepared.flatten(),
                    );
                }
            }
            Err(e) => error!("cannot process the bundle inbox: {e}"),
        }
    }

    /// Acts on an accepted or rejected bundle (inbox or central).
    fn on_bundle(
        &mut self,
        source: &str,
        result: Result<Accepted, BundleError>,
        prepared: Option<PreparedModel>,
    ) {
        let now = Timestamp::now();
        match result {
            Ok(Accepted::Config(c)) => {
                let version = c.version;
                let res = match prepared {
                    Some(p) => self.install_prepared(p),
                    None => self.apply_model(&c.model, &bundle_source(&c.payload)),
                };
                let (code, desc) = match &res {
                    Ok(()) => (
                        "applied",
                        format!("configuration version {version} from {source} is in force"),
                    ),
                    Err(e) => (
                        "apply_failed",
                        format!(
                            "configuration version {version} from {source} was accepted but could not be put in force: {e}"
                        ),
                    ),
                };
                if let Err(e) = &res {
                    error!("{desc}: {e}");
                } else {
                    info!("{desc}");
                }
                self.config_row(Action::Config, &version.to_string(), code, desc);
                self.last_apply = Some((res.is_ok(), Timestamp::now().0 as f64 / 1000.0));
            }
            Ok(Accepted::ExportRequest(r)) => {
                match self.with_request_env(|env| crate::requests::accept(env, &r.payload)) {
                    Ok(req) => {
                        info!(request = %req.request_id, "export request from {source} accepted");
                        self.spawn_request(req);
                    }
                    Err(e) => {
                        warn!("export request {} from {source} refused: {e}", r.request_id);
                        self.config_row(Action::Request, &r.request_id, "rejected", e.to_string());
                    }
                }
            }
            Err(e) => {
                let reason = format!("{source}: {}", e.one_line());
                warn!("bundle rejected: {reason}");
                self.status.last_rejection = Some(format!("{} {reason}", now.rfc3339()));
                self.last_apply = Some((false, now.0 as f64 / 1000.0));
                self.config_row(Action::Config, "", e.code(), reason);
            }
        }
        self.status_dirty = true;
        if let Some(k) = &self.central_kick {
            let _ = k.send(());
        }
    }

    fn config_row(&self, action: Action, id: &str, code: &str, desc: String) {
        let row = Row {
            ccdr_id: id.to_string(),
            action: action.as_str(),
            error_code: code.to_string(),
            error_desc: desc,
            ..Row::default()
        };
        let mut a = self.ctx.audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = a.append(&row) {
            error!("audit row could not be written: {e}");
        }
    }

    fn spawn_request(&mut self, req: crate::compliance::ExportRequest) {
        let id = req.request_id.clone();
        if !self.requests_running.insert(id.clone()) {
            return;
        }
        let state_dir = self.cfg.state_dir.clone();
        let roots = self.ctx.roots.as_ref().clone();
        let model = self.load_model();
        let targets = self.ctx.targets.clone();
        let keys = self.ctx.keys.clone();
        let audit = self.ctx.audit.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let env = crate::requests::RequestEnv {
                state_dir: &state_dir,
                roots,
                model: &model,
                targets: &targets,
                keys,
                audit: &audit,
            };
            let r = crate::requests::execute(&env, &req, &mut |_| {})
                .map(|s| s.zip.display().to_string())
                .map_err(|e| e.to_string());
            let _ = tx.send(Msg::RequestDone(id, r));
        });
    }

    fn on_request_done(&mut self, id: String, r: Result<String, String>) {
        self.requests_running.remove(&id);
        match r {
            Ok(zip) => info!(request = %id, "compliance export completed: {zip}"),
            Err(e) => error!(request = %id, "compliance export failed: {e}"),
        }
        self.next_expiry = self.expiry_instant();
        self.status_dirty = true;
        if let Some(k) = &self.central_kick {
            let _ = k.send(());
        }
    }

    /// Requests accepted earlier but not finished (a restart): run them again.
    fn resume_requests(&mut self) {
        let store = crate::compliance::StatusStore::new(&self.cfg.state_dir);
        let Ok(list) = store.list() else { return };
        for st in list {
            if !matches!(
                st.status,
                crate::compliance::State::Accepted | crate::compliance::State::InProgress
            ) {
                continue;
            }
            match crate::requests::load_saved(&self.cfg.state_dir, &st.request_id) {
                Some(req) => {
                    info!(request = %st.request_id, "resuming an unfinished compliance export");
                    self.spawn_request(req);
                }
                None => {
                    warn!(request = %st.request_id, "unfinished request has no saved payload; resubmit it")
                }
            }
        }
    }

    fn expiry_instant(&self) -> Option<Instant> {
        let t = crate::requests::next_expiry(&self.cfg.state_dir)?;
        let ms = (t.0 - Timestamp::now().0).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(ms))
    }

    fn expire_requests(&mut self) {
        // Expiry only touches the request store and the audit log: the model
        // (100,000 users are ~100 MiB parsed) is not read for it.
        let ids = self.request_env_with(Model::default(), |env| {
            crate::requests::expire(env, Timestamp::now())
        });
        for id in ids {
            info!(request = %id, "compliance export expired: zip removed");
        }
        self.next_expiry = self.expiry_instant();
    }

    /// Starts the central poller thread when `[central]` is configured.
    fn start_central(&mut self) {
        let (Some(central), Some(bundle)) = (self.cfg.central.clone(), self.bundle.clone()) else {
            return;
        };
        let cc = crate::bundle::central::CentralConfig {
            url: central.url.clone(),
            ca: central.ca.clone(),
            client_cert: central.client_cert.clone(),
            client_key: central.client_key.clone(),
        };
        let client = match CentralClient::new(&cc, &self.cfg.agent_id) {
            Ok(c) => c,
            Err(e) => {
                error!("central is disabled: {e}");
                return;
            }
        };
        let (kick_tx, kick_rx) = std::sync::mpsc::channel::<()>();
        self.central_kick = Some(kick_tx);
        let anchors = self.cfg.trust.clone();
        let spool = self.cfg.spool.clone();
        let env = target_env(&self.cfg);
        let tx = self.tx.clone();
        let shared = self.shared_status.clone();
        let state_dir = self.cfg.state_dir.clone();
        let agent_id = self.cfg.agent_id.clone();
        let heartbeat = Duration::from_secs(central.heartbeat_s.max(1));
        let poll_interval = Duration::from_secs(central.poll_interval_s.max(1));
        std::thread::Builder::new()
            .name("central".into())
            .spawn(move || {
                let mut backoff = crate::bundle::central::Backoff::new();
                let mut last_report = Instant::now() - heartbeat;
                // Sleeps until `deadline`; a kick from the main loop sends a
                // status report at once without cutting the wait short.
                // Returns false when the agent is shutting down (its end of the
                // kick channel is gone): the thread then stops at once.
                let wait_until = |deadline: Instant, last_report: &mut Instant| -> bool {
                    loop {
                        let now = Instant::now();
                        if now >= deadline {
                            return true;
                        }
                        match kick_rx.recv_timeout(deadline - now) {
                            Ok(()) => {
                                let rep = status_report(&agent_id, &state_dir, &shared, &bundle);
                                match client.post_status(&rep) {
                                    Ok(()) => *last_report = Instant::now(),
                                    Err(e) => warn!("status report to central failed: {e}"),
                                }
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return true,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                        }
                    }
                };
                loop {
                    let report_due =
                        last_report.elapsed() >= heartbeat || kick_rx.try_recv().is_ok();
                    if report_due {
                        let rep = status_report(&agent_id, &state_dir, &shared, &bundle);
                        match client.post_status(&rep) {
                            Ok(()) => last_report = Instant::now(),
                            Err(e) => warn!("status report to central failed: {e}"),
                        }
                    }
                    let poll_started = Instant::now();
                    let mut applied: Option<(Accepted, Option<PreparedModel>)> = None;
                    let res = {
                        let mut st = bundle.lock().unwrap_or_else(|p| p.into_inner());
                        let after = st.version();
                        drop(st);
                        // Long-poll without holding the state lock; apply under it.
                        match client.fetch_bundle_bytes(after) {
                            Ok(None) => Ok(FetchOutcome::NothingNew),
                            Ok(Some(body)) => {
                                st = bundle.lock().unwrap_or_else(|p| p.into_inner());
                                // Built before the commit: a model that cannot
                                // be put in force is rejected, never committed.
                                match crate::bundle::apply::apply_bytes_with(
                                    &body,
                                    "central",
                                    &anchors,
                                    &mut st,
                                    &mut prepare_bundle(&spool, &env),
                                ) {
                                    Ok((a, prepared)) => {
                                        applied = Some((a, prepared));
                                        Ok(FetchOutcome::NothingNew)
                                    }
                                    Err(e) => Ok(FetchOutcome::Rejected(e)),
                                }
                            }
                            Err(e) => Err(e),
                        }
                    };
                    if let Some((a, prepared)) = applied.take() {
                        backoff.reset();
                        if tx.send(Msg::CentralApplied(a, prepared)).is_err() {
                            return;
                        }
                        continue;
                    }
                    match res {
                        Ok(FetchOutcome::NothingNew) => {
                            backoff.reset();
                            // Central answered without holding the request: do
                            // not hammer it; wait (a status report may wake us).
                            if !wait_until(poll_started + poll_interval, &mut last_report) {
                                return;
                            }
                        }
                        Ok(out) => {
                            backoff.reset();
                            let rejected = matches!(out, FetchOutcome::Rejected(_));
                            if tx.send(Msg::Central(out)).is_err() {
                                return;
                            }
                            // Central keeps offering a bundle we refuse: do not
                            // fetch it again in a loop.
                            if rejected
                                && !wait_until(poll_started + poll_interval, &mut last_report)
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let d = backoff.next_delay();
                            warn!(
                                "central unreachable ({e}); retrying in {:.0}s",
                                d.as_secs_f64()
                            );
                            // Wait, but wake early to send a status report when asked.
                            match kick_rx.recv_timeout(d) {
                                Ok(()) => last_report = Instant::now() - heartbeat,
                                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            }
                        }
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            })
            .ok();
    }

    fn on_central(&mut self, out: FetchOutcome) {
        match out {
            FetchOutcome::NothingNew => {}
            FetchOutcome::Applied(a) => self.on_bundle("central", Ok(a), None),
            FetchOutcome::Rejected(e) => self.on_bundle("central", Err(e), None),
        }
    }
}

/// Capped exponential backoff with jitter: 1 s, 2 s, 4 s ... up to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(9).saturating_sub(1);
    let capped = base.min(300) * 1000;
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0))
        % (capped / 4 + 1);
    Duration::from_millis(capped - capped / 8 + jitter)
}

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
    let requests = crate::compliance::StatusStore::new(state_dir)
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
