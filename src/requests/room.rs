//! The requests room: the daemon's compliance export runs and their
//! expiry. Never checks a bundle's signature or touches the record queue.
//!
//! It runs the daemon's compliance export requests (pushed
//! by central or dropped in the inbox, or left unfinished by a restart),
//! each on a blocking worker, and the expiry of completed exports. Never
//! checks a bundle's signature or touches the record queue.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::export::Ctx;
use crate::requests::RequestEnv;
use crate::requests::compliance::{ExportRequest, State, StatusStore};
use crate::time::Timestamp;

/// A request's run ended: the zip's path, or why it failed.
#[derive(Debug)]
pub struct Done {
    /// The request id.
    pub id: String,
    /// The zip, or the error.
    pub result: Result<String, String>,
}

/// Where a finished run is reported (the agent's mailbox).
pub type Post = Arc<dyn Fn(Done) + Send + Sync>;

/// Runs `f` with the environment requests need: the agent's roots,
/// targets, keys and audit log, and the snapshot of the model in force
/// (its indexes answer for the users: the directory is never parsed).
pub fn with_env<R>(state_dir: &Path, ctx: &Ctx, f: impl FnOnce(&RequestEnv<'_>) -> R) -> R {
    let env = RequestEnv {
        state_dir,
        roots: ctx.roots.as_ref().clone(),
        snap: &ctx.snap,
        targets: &ctx.targets,
        keys: ctx.keys.clone(),
        audit: &ctx.audit,
    };
    f(&env)
}

/// The requests room.
pub struct Requests {
    state_dir: PathBuf,
    post: Post,
    /// Requests running in this daemon.
    running: HashSet<String>,
    /// When the next completed compliance export expires.
    next_expiry: Option<Instant>,
}

impl Requests {
    /// No request running yet.
    pub fn new(state_dir: &Path, post: Post) -> Requests {
        Requests {
            state_dir: state_dir.to_path_buf(),
            post,
            running: HashSet::new(),
            next_expiry: None,
        }
    }

    /// No request is running.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// When the next completed export expires.
    pub fn next_timer(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// Expires what is due.
    pub fn fire(&mut self, now: Instant, ctx: &Ctx) {
        if self.next_expiry.is_some_and(|d| d <= now) {
            self.expire(ctx);
        }
    }

    /// Runs an accepted request on a blocking worker (once at a time per id).
    pub fn spawn(&mut self, req: ExportRequest, ctx: &Ctx) {
        let id = req.request_id.clone();
        if !self.running.insert(id.clone()) {
            return;
        }
        let state_dir = self.state_dir.clone();
        let snap = ctx.snap.clone();
        let roots = ctx.roots.as_ref().clone();
        let targets = ctx.targets.clone();
        let keys = ctx.keys.clone();
        let audit = ctx.audit.clone();
        let post = self.post.clone();
        tokio::task::spawn_blocking(move || {
            // The snapshot in force when the request started: a model
            // swapped in meanwhile does not change the request's users.
            let env = RequestEnv {
                state_dir: &state_dir,
                roots,
                snap: &snap,
                targets: &targets,
                keys,
                audit: &audit,
            };
            let result = crate::requests::execute(&env, &req, &mut |_| {})
                .map(|s| s.zip.display().to_string())
                .map_err(|e| e.to_string());
            post(Done { id, result });
        });
    }

    /// A run ended.
    pub fn on_done(&mut self, d: Done) {
        self.running.remove(&d.id);
        let id = d.id;
        match d.result {
            Ok(zip) => info!(request = %id, "compliance export completed: {zip}"),
            Err(e) => error!(request = %id, "compliance export failed: {e}"),
        }
        self.next_expiry = self.expiry_instant();
    }

    /// Requests accepted earlier but not finished (a restart): run them again.
    pub fn resume(&mut self, ctx: &Ctx) {
        let store = StatusStore::new(&self.state_dir);
        let Ok(list) = store.list() else { return };
        for st in list {
            if !matches!(st.status, State::Accepted | State::InProgress) {
                continue;
            }
            match crate::requests::load_saved(&self.state_dir, &st.request_id) {
                Some(req) => {
                    let id = st.request_id.as_str();
                    if !with_env(&self.state_dir, ctx, |env| {
                        crate::requests::count_resume(env, id)
                    }) {
                        warn!(request = %id, "unfinished compliance export not resumed again: it failed");
                        continue;
                    }
                    info!(request = %id, "resuming an unfinished compliance export");
                    self.spawn(req, ctx);
                }
                None => {
                    warn!(request = %st.request_id, "unfinished request has no saved payload; resubmit it")
                }
            }
        }
    }

    fn expiry_instant(&self) -> Option<Instant> {
        let t = crate::requests::next_expiry(&self.state_dir)?;
        let ms = (t.0 - Timestamp::now().0).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(ms))
    }

    /// Removes the zips of completed exports that expired.
    pub fn expire(&mut self, ctx: &Ctx) {
        let ids = with_env(&self.state_dir, ctx, |env| {
            crate::requests::expire(env, Timestamp::now())
        });
        for id in ids {
            info!(request = %id, "compliance export expired: zip removed");
        }
        self.next_expiry = self.expiry_instant();
    }
}
