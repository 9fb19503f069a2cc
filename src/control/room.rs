//! The control room: SIGHUP reload, inbox, central bundles, keys, model
//! swap. Never queues records or runs an export request itself.
//!
//! It handles what changes the agent's configuration while it runs:
//! SIGHUP reload of exportd.toml, the bundle inbox, bundles from the
//! central poller, new age identities, and the model swap they lead to.
//! It says what follows as [`ControlOut`] messages; it never queues
//! records or runs an export request itself.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::agent::AgentError;
use crate::agent::setup::{
    PreparedModel, Ready, build_targets, bundle_source, check_spool_overlap, install_compiled,
    install_snapshot, prepare_bundle, snapshot_in_force, target_env,
};
use crate::agent::status::Status;
use crate::control::bundle::central::FetchOutcome;
use crate::control::bundle::{Accepted, BundleError, BundleState};
use crate::control::poller::{self, FromCentral};
use crate::export::{self, Ctx};
use crate::ledger::audit::{Action, Row};
use crate::policy::config::LocalConfig;
use crate::policy::model::Model;
use crate::policy::snapshot::Snapshot;
use crate::requests::compliance::ExportRequest;
use crate::sink::Target;
use crate::time::Timestamp;

/// What follows from a control event, for the agent to route, in order.
#[derive(Debug)]
pub enum ControlOut {
    /// A new model is in force: blocked records go again.
    ModelSwapped,
    /// The age identities changed: records waiting for a key go again.
    KeysChanged,
    /// Reloaded settings the other rooms keep.
    Reconfigured {
        /// Workers at once.
        workers: usize,
        /// Grace for missing files, seconds.
        grace_s: u64,
        /// The keys folder.
        keys_dir: PathBuf,
    },
    /// An export request was accepted: run it.
    RequestAccepted(ExportRequest),
    /// A configuration apply ended: success, unix seconds.
    Applied(bool, f64),
    /// A bundle was rejected: `<time> <reason>`.
    Rejected(String),
    /// Something shown in the status changed.
    Changed,
}

/// The control room.
pub struct Control {
    cfg_path: PathBuf,
    cfg: LocalConfig,
    /// Accepted bundles and granted keys; shared with the central poller.
    bundle: Option<Arc<Mutex<BundleState>>>,
    keys_fp: [u8; 32],
    /// Wakes the central thread to report at once.
    central_kick: Option<Sender<()>>,
    out: Vec<ControlOut>,
}

impl Control {
    /// Loads the bundle state and checks the trust anchors.
    pub fn new(cfg_path: &Path, cfg: LocalConfig, ctx: &Ctx) -> Result<Control, AgentError> {
        let bundle = match BundleState::load(&cfg.state_dir) {
            Ok(b) => Some(Arc::new(Mutex::new(b))),
            Err(e) => {
                error!("signed bundles are disabled: {e}");
                None
            }
        };
        if let Err(e) = crate::control::bundle::trust::TrustSet::new(&cfg.trust, &[]) {
            return Err(AgentError::Runtime(format!(
                "trust anchors in {}: {e}",
                cfg_path.display()
            )));
        }
        Ok(Control {
            cfg_path: cfg_path.to_path_buf(),
            cfg,
            bundle,
            keys_fp: ctx.keys.fingerprint(),
            central_kick: None,
            out: Vec::new(),
        })
    }

    /// The configuration in force.
    pub fn cfg(&self) -> &LocalConfig {
        &self.cfg
    }

    fn take(&mut self) -> Vec<ControlOut> {
        std::mem::take(&mut self.out)
    }

    /// Creates the bundle inbox (owner only); false when it cannot be.
    pub fn make_inbox(&self) -> bool {
        let inbox = crate::control::bundle::inbox::inbox_dir(&self.cfg.state_dir);
        if std::fs::create_dir_all(&inbox).is_err() {
            return false;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&inbox, std::fs::Permissions::from_mode(0o700));
        true
    }

    /// Starts the central poller thread when `[central]` is configured.
    pub fn start_central<M: Send + 'static>(
        &mut self,
        shared: Arc<Mutex<Status>>,
        tx: UnboundedSender<M>,
        wrap: fn(FromCentral) -> M,
    ) {
        let Some(bundle) = self.bundle.clone() else {
            return;
        };
        if let Some(kick) = poller::start(&self.cfg, bundle, shared, tx, wrap) {
            self.central_kick = Some(kick);
        }
    }

    /// Wakes the central poller to report the status at once.
    pub fn kick(&self) {
        if let Some(k) = &self.central_kick {
            let _ = k.send(());
        }
    }

    /// SIGHUP: re-read exportd.toml; validate, then swap atomically.
    #[must_use = "what a room says must be routed"]
    pub fn reload(&mut self, ctx: &mut Ctx) -> Vec<ControlOut> {
        info!("SIGHUP: reloading {}", self.cfg_path.display());
        // The users are parsed (and checked) only if the snapshot must be
        // compiled again, as at startup.
        let (cfg, cfg_sha256) = match LocalConfig::load_head(&self.cfg_path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused, the configuration in force stays: {e}");
                return self.take();
            }
        };
        if cfg.spool != self.cfg.spool || cfg.state_dir != self.cfg.state_dir {
            warn!("spool and state_dir changes take effect after a restart");
        }
        if cfg.central != self.cfg.central {
            warn!(
                "[central] changes take effect after a restart (the poller keeps its connection settings)"
            );
        }
        let snap = match snapshot_in_force(&self.cfg_path, &self.cfg.state_dir, &cfg_sha256) {
            Ok(s) => s,
            Err(e) => {
                error!("reload refused, the configuration in force stays: {e}");
                return self.take();
            }
        };
        if let Err(e) = self.swap_snapshot(ctx, snap) {
            error!("reload refused, the configuration in force stays: {e}");
            return self.take();
        }
        self.cfg.incomplete_grace_s = cfg.incomplete_grace_s;
        self.cfg.workers = cfg.workers;
        self.cfg.trust = cfg.trust;
        self.cfg.max_bundle_bytes = cfg.max_bundle_bytes;
        self.cfg.keys_dir = cfg.keys_dir;
        self.out.push(ControlOut::Reconfigured {
            workers: self.cfg.workers,
            grace_s: self.cfg.incomplete_grace_s,
            keys_dir: self.cfg.keys_dir.clone(),
        });
        self.check_keys(ctx);
        self.take()
    }

    /// The keys folder changed: new identities retry the records waiting for one.
    #[must_use = "what a room says must be routed"]
    pub fn reload_keys(&mut self, ctx: &mut Ctx) -> Vec<ControlOut> {
        self.check_keys(ctx);
        self.take()
    }

    fn check_keys(&mut self, ctx: &mut Ctx) {
        let keys = export::load_keys(&self.cfg.keys_dir);
        let fp = keys.fingerprint();
        if fp != self.keys_fp {
            info!("age identities changed: retrying records that were waiting for a key");
            self.keys_fp = fp;
            ctx.keys = keys;
            ctx.reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.out.push(ControlOut::KeysChanged);
        }
    }

    /// Swaps in a new model: records already running finish under the old one.
    fn apply_model(
        &mut self,
        ctx: &mut Ctx,
        model: &Model,
        source: &str,
    ) -> Result<(), AgentError> {
        let snap = install_snapshot(&self.cfg.state_dir, model, Some(source))?;
        self.swap_snapshot(ctx, snap)
    }

    /// Puts a prepared (and already committed) model in force: writes its
    /// snapshot and swaps it in with the targets built before the commit.
    /// Fails only when the snapshot file cannot be written or mapped; the
    /// committed version is then compiled again at the next start.
    fn install_prepared(&mut self, ctx: &mut Ctx, p: PreparedModel) -> Result<(), AgentError> {
        let snap = match p.snapshot {
            Ready::File(t) => install_compiled(&self.cfg.state_dir, &t)?,
            Ready::Overlaid(s) => Snapshot::clone(&s),
        };
        self.swap_in(ctx, snap, p.targets);
        Ok(())
    }

    fn swap_snapshot(&mut self, ctx: &mut Ctx, snap: Snapshot) -> Result<(), AgentError> {
        check_spool_overlap(&snap, &self.cfg.spool)?;
        let targets = build_targets(&snap, &target_env(&self.cfg))?;
        self.swap_in(ctx, snap, targets);
        Ok(())
    }

    fn swap_in(&mut self, ctx: &mut Ctx, snap: Snapshot, targets: Vec<Arc<dyn Target>>) {
        ctx.snap = Arc::new(snap);
        ctx.targets = Arc::new(targets);
        self.register_snapshot(ctx);
        ctx.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        info!(version = ctx.snap.version(), "policy model in force");
        self.out.push(ControlOut::ModelSwapped);
    }

    /// Tells the bundle state which snapshot is in force, so that a users
    /// delta is applied beside it.
    fn register_snapshot(&self, ctx: &Ctx) {
        if let Some(b) = &self.bundle {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_snapshot_in_force(Some(ctx.snap.clone()));
        }
    }

    /// Takes every file waiting in `<state_dir>/inbox/`.
    #[must_use = "what a room says must be routed"]
    pub fn process_inbox(&mut self, ctx: &mut Ctx) -> Vec<ControlOut> {
        self.register_snapshot(ctx);
        let Some(b) = self.bundle.clone() else {
            return self.take();
        };
        let outcomes = {
            let mut st = b.lock().unwrap_or_else(|p| p.into_inner());
            crate::control::bundle::inbox::process_inbox_max(
                &self.cfg.state_dir,
                &self.cfg.trust,
                &mut st,
                self.cfg.max_bundle_bytes(),
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
                        ctx,
                        &format!("inbox file {}", o.name),
                        o.result,
                        o.prepared.flatten(),
                    );
                }
            }
            Err(e) => error!("cannot process the bundle inbox: {e}"),
        }
        self.take()
    }

    /// What the central poller handed over.
    #[must_use = "what a room says must be routed"]
    pub fn on_central(&mut self, ctx: &mut Ctx, m: FromCentral) -> Vec<ControlOut> {
        match m {
            FromCentral::Outcome(FetchOutcome::NothingNew) => {}
            FromCentral::Outcome(FetchOutcome::Applied(a)) => {
                self.on_bundle(ctx, "central", Ok(a), None)
            }
            FromCentral::Outcome(FetchOutcome::Rejected(e)) => {
                self.on_bundle(ctx, "central", Err(e), None)
            }
            FromCentral::Applied(a, prepared) => self.on_bundle(ctx, "central", Ok(a), prepared),
        }
        self.take()
    }

    /// Acts on an accepted or rejected bundle (inbox or central).
    fn on_bundle(
        &mut self,
        ctx: &mut Ctx,
        source: &str,
        result: Result<Accepted, BundleError>,
        prepared: Option<PreparedModel>,
    ) {
        let now = Timestamp::now();
        match result {
            Ok(Accepted::Config(c)) => {
                let res = match (prepared, &c.compiled) {
                    (Some(p), _) => self.install_prepared(ctx, p),
                    (None, _) if c.overlaid.is_some() => {
                        let s = c.overlaid.as_ref().map(|o| Snapshot::clone(&o.0));
                        match s {
                            Some(s) => self.swap_snapshot(ctx, s),
                            None => Ok(()),
                        }
                    }
                    (None, Some(compiled)) => {
                        install_compiled(&self.cfg.state_dir, &compiled.snapshot)
                            .and_then(|snap| self.swap_snapshot(ctx, snap))
                    }
                    (None, None) => self.apply_model(ctx, &c.model, &bundle_source(&c.payload)),
                };
                self.config_applied(ctx, c.version, source, res);
            }
            Ok(Accepted::ExportRequest(r)) => {
                // Checked against the snapshot in force (its indexes): the
                // directory is not parsed on the agent's loop.
                let accepted = crate::requests::room::with_env(&self.cfg.state_dir, ctx, |env| {
                    crate::requests::accept(env, &r.payload)
                });
                match accepted {
                    Ok(req) => {
                        info!(request = %req.request_id, "export request from {source} accepted");
                        self.out.push(ControlOut::RequestAccepted(req));
                    }
                    Err(e) => {
                        warn!("export request {} from {source} refused: {e}", r.request_id);
                        config_row(
                            ctx,
                            Action::Request,
                            &r.request_id,
                            "rejected",
                            e.to_string(),
                        );
                    }
                }
            }
            Err(e) => {
                let reason = format!("{source}: {}", e.one_line());
                warn!("bundle rejected: {reason}");
                self.out
                    .push(ControlOut::Rejected(format!("{} {reason}", now.rfc3339())));
                self.out
                    .push(ControlOut::Applied(false, now.0 as f64 / 1000.0));
                config_row(ctx, Action::Config, "", e.code(), reason);
            }
        }
        self.out.push(ControlOut::Changed);
        self.kick();
    }

    /// Logs and audits the end of a configuration apply.
    fn config_applied(
        &mut self,
        ctx: &Ctx,
        version: u64,
        source: &str,
        res: Result<(), AgentError>,
    ) {
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
        config_row(ctx, Action::Config, &version.to_string(), code, desc);
        self.out.push(ControlOut::Applied(
            res.is_ok(),
            Timestamp::now().0 as f64 / 1000.0,
        ));
    }
}

/// Appends a configuration or request row to the audit log.
fn config_row(ctx: &Ctx, action: Action, id: &str, code: &str, desc: String) {
    let row = Row {
        ccdr_id: id.to_string(),
        action: action.as_str(),
        error_code: code.to_string(),
        error_desc: desc,
        ..Row::default()
    };
    let mut a = ctx.audit.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = a.append(&row) {
        error!("audit row could not be written: {e}");
    }
}
