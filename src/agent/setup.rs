//! Putting a policy model in force: startup context, snapshot, checks
//! before a swap. Never watches, queues or runs a record.
//!
//! The startup context (journal, audit,
//! snapshot, targets, keys), the snapshot of the model in force, and the
//! checks a new model passes before it is committed (no folder target over
//! the spool, a snapshot that compiles and opens, targets that build).
//! Never watches, queues or runs a record.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{error, info};

use crate::agent::AgentError;
use crate::control::bundle::streamed::{Compiled, TempFile, tmp_snapshot};
use crate::control::bundle::{Accepted, AcceptedConfig, BundleState};
use crate::export::{self, Ctx, Keys};
use crate::ledger::audit::AuditLog;
use crate::ledger::journal::{FileStore, Journal};
use crate::policy::config::LocalConfig;
use crate::policy::intake;
use crate::policy::model::{Model, TargetKind, TargetSpec};
use crate::policy::snapshot::{self, Snapshot, SnapshotError};
use crate::sink::{
    Target,
    fs::{FsTarget, TargetEnv},
};

/// The policy model in force: the last accepted central bundle, else the
/// inline model of exportd.toml.
pub fn model_in_force(cfg: &LocalConfig) -> Model {
    match BundleState::load(&cfg.state_dir) {
        Ok(st) => st.current_model().unwrap_or_else(|| cfg.inline_model()),
        Err(e) => {
            error!("the cached central bundle cannot be read ({e}); using the inline model");
            cfg.inline_model()
        }
    }
}

pub(crate) fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
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
            TargetKind::S3 => v.push(Arc::new(crate::sink::s3::S3Target::new(spec).map_err(
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
    let p = crate::policy::model::normalize_lexically(p);
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
    crate::policy::model::spool_overlaps(&ts, &ss)
        .into_iter()
        .map(|e| e.0)
        .collect()
}

/// Refuses a snapshot with a folder target overlapping a spool root.
pub(crate) fn check_spool_overlap(snap: &Snapshot, spool: &[PathBuf]) -> Result<(), AgentError> {
    let problems = spool_overlap_problems(snap.targets(), spool);
    if problems.is_empty() {
        return Ok(());
    }
    Err(AgentError::SpoolOverlap {
        version: snap.version(),
        problems: problems.join("; "),
    })
}

/// A configuration ready to be put in force: its snapshot compiled into a
/// temporary file under `state_dir` (and checked by opening it) and its
/// targets built, before anything is committed.
pub struct PreparedModel {
    /// The compiled snapshot file (removed if never installed), or the
    /// snapshot itself for a users delta kept beside the file in force.
    pub(crate) snapshot: Ready,
    /// Targets aligned with the snapshot's.
    pub(crate) targets: Vec<Arc<dyn Target>>,
}

impl std::fmt::Debug for PreparedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedModel")
            .field(
                "snapshot",
                &match &self.snapshot {
                    Ready::File(t) => Some(t.path()),
                    Ready::Overlaid(_) => None,
                },
            )
            .field("targets", &self.targets.len())
            .finish()
    }
}

/// A prepared snapshot: a file to rename into place, or a value to swap in.
pub(crate) enum Ready {
    /// A compiled snapshot file.
    File(Arc<TempFile>),
    /// A users delta applied beside the file in force (nothing written).
    Overlaid(Arc<Snapshot>),
}

/// Renames a compiled snapshot into `<state_dir>/snapshot.bin` and maps it.
pub(crate) fn install_compiled(state_dir: &Path, tmp: &TempFile) -> Result<Snapshot, AgentError> {
    let path = state_dir.join("snapshot.bin");
    crate::policy::intake::compile::install(tmp.path(), &path).map_err(SnapshotError::from)?;
    Ok(Snapshot::open(&path)?)
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
    let tmp = Arc::new(TempFile::new(tmp_snapshot(&env.state_dir)));
    snapshot::write_atomic(tmp.path(), &bytes)
        .map_err(|e| format!("the snapshot cannot be written: {e}"))?;
    drop(bytes);
    Snapshot::open(tmp.path()).map_err(|e| format!("the compiled snapshot does not open: {e}"))?;
    let targets = build_targets_from(&model.targets, env).map_err(|e| e.to_string())?;
    Ok(PreparedModel {
        snapshot: Ready::File(tmp),
        targets,
    })
}

/// [`prepare_model`] for a configuration compiled while it was checked
/// (a spooled bundle): the same checks on its snapshot file.
pub fn prepare_compiled(
    c: &AcceptedConfig,
    compiled: &Compiled,
    spool: &[PathBuf],
    env: &TargetEnv,
) -> Result<PreparedModel, String> {
    let overlaps = spool_overlap_problems(&c.model.targets, spool);
    if !overlaps.is_empty() {
        return Err(overlaps.join("; "));
    }
    Snapshot::open(compiled.snapshot.path())
        .map_err(|e| format!("the compiled snapshot does not open: {e}"))?;
    let targets = build_targets_from(&c.model.targets, env).map_err(|e| e.to_string())?;
    Ok(PreparedModel {
        snapshot: Ready::File(compiled.snapshot.clone()),
        targets,
    })
}

/// The snapshot source key of an accepted configuration bundle.
pub(crate) fn bundle_source(payload: &[u8]) -> String {
    use sha2::Digest;
    format!("bundle:{}", hex::encode(sha2::Sha256::digest(payload)))
}

/// The preparation step for every bundle the daemon applies (inbox and
/// central): configurations are prepared with [`prepare_model`]; export
/// requests need nothing before their commit.
pub(crate) fn prepare_bundle<'a>(
    spool: &'a [PathBuf],
    env: &'a TargetEnv,
) -> impl FnMut(&Accepted) -> Result<Option<PreparedModel>, String> + 'a {
    move |a| match a {
        Accepted::Config(c) => match (&c.overlaid, &c.compiled) {
            (Some(o), _) => {
                // Same targets as the model in force: built again, nothing
                // compiled or read (the base file is already in force).
                let targets =
                    build_targets_from(&c.model.targets, env).map_err(|e| e.to_string())?;
                Ok(Some(PreparedModel {
                    snapshot: Ready::Overlaid(o.0.clone()),
                    targets,
                }))
            }
            (None, Some(compiled)) => prepare_compiled(c, compiled, spool, env).map(Some),
            (None, None) => {
                prepare_model(&c.model, &bundle_source(&c.payload), spool, env).map(Some)
            }
        },
        Accepted::ExportRequest(_) => Ok(None),
    }
}

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
    match current_or_compiled(cfg_path, state_dir, config_sha256)? {
        Found::Current(s) => Ok(s),
        Found::Compiled(tmp) => install_compiled(state_dir, &tmp),
    }
}

/// The snapshot of the model in force for a command beside the daemon
/// (`exportd request submit`): `snapshot.bin` when it is current (with the
/// accepted deltas beside it), else the model compiled as a stream into a
/// private file that is mapped and removed at once. `snapshot.bin` is never
/// replaced: it is the daemon's.
pub fn snapshot_to_read(
    cfg_path: &Path,
    state_dir: &Path,
    config_sha256: &[u8; 32],
) -> Result<Snapshot, AgentError> {
    match current_or_compiled(cfg_path, state_dir, config_sha256)? {
        Found::Current(s) => Ok(s),
        // The map outlives the file's name (removed when `tmp` drops).
        Found::Compiled(tmp) => Ok(Snapshot::open(tmp.path())?),
    }
}

enum Found {
    Current(Snapshot),
    Compiled(TempFile),
}

fn current_or_compiled(
    cfg_path: &Path,
    state_dir: &Path,
    config_sha256: &[u8; 32],
) -> Result<Found, AgentError> {
    let bundle = match BundleState::load(state_dir) {
        Ok(b) => Some(b),
        Err(e) => {
            error!("the cached central bundle cannot be read ({e}); using the inline model");
            None
        }
    };
    let source = match bundle.as_ref().and_then(|b| b.current_source()) {
        Some(s) => s,
        None => format!("config:{}", hex::encode(config_sha256)),
    };
    let path = state_dir.join("snapshot.bin");
    if let Ok(s) = Snapshot::open(&path) {
        if s.source() == Some(source.as_str()) {
            return Ok(Found::Current(s));
        }
        // The file with the first deltas of the chain: the later ones are
        // applied beside it (users deltas are never written into it).
        if let Some(b) = bundle.as_ref().filter(|b| b.current_source().is_some()) {
            match crate::control::bundle::delta::overlay_in_force(b, s) {
                Ok(Some(o)) => return Ok(Found::Current(o)),
                Ok(None) => {}
                Err(e) => error!(
                    "the accepted deltas cannot be applied beside {}: {e}; compiling the model in force",
                    path.display()
                ),
            }
        }
    }
    // Compiled as a stream: users are parsed, checked and indexed one at a
    // time (crate::policy::intake), never all held.
    let tmp = TempFile::new(tmp_snapshot(state_dir));
    match bundle.as_ref().filter(|b| b.current_source().is_some()) {
        Some(b) => {
            crate::control::bundle::delta::compile_in_force(b, state_dir, tmp.path())
                .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        }
        None => {
            let (cfg, _) = LocalConfig::load_head(cfg_path)?;
            intake::compile_config(cfg_path, &cfg, Some(source), state_dir, tmp.path())
                .map_err(SnapshotError::from)?;
        }
    }
    Ok(Found::Compiled(tmp))
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
    intake::clean_stale(&cfg.state_dir);
    let jpath = cfg.state_dir.join("journal.log");
    let journal = Journal::open(FileStore::new(jpath.clone())).map_err(state_err(&jpath))?;
    let audit = AuditLog::open(&cfg.state_dir)?;
    let mut journal = journal;
    // Before any worker runs: export rows written just before a crash
    // without their journal entry are found (see `recovery`).
    crate::ledger::recovery::recover(audit.dir(), &mut journal).map_err(state_err(&jpath))?;
    let snap = snapshot_in_force(cfg_path, &cfg.state_dir, config_sha256)?;
    let targets = build_targets(&snap, &target_env(cfg))?;
    for t in &targets {
        let n = t.recover();
        if n > 0 {
            info!(target = %t.spec().id, "removed {n} temp files left by an interrupted run");
        }
    }
    let keys: Arc<dyn Keys> = export::load_keys(&cfg.keys_dir);
    let roots = crate::watch::spool::canonical_roots(&cfg.spool);
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
